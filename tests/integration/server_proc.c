/* See server_proc.h. */
#include "server_proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

extern char **environ;

uint64_t proc_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* A "Name:   value ..." line of /proc/PID/status; 0 if absent. */
static uint64_t status_field(pid_t pid, const char *name) {
  char path[64], line[256];
  size_t n = strlen(name);
  uint64_t v = 0;
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return 0;
  while (fgets(line, sizeof(line), f))
    if (strncmp(line, name, n) == 0 && line[n] == ':') {
      v = strtoull(line + n + 1, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

uint64_t server_proc_rss_kib(const struct server_proc *p) { return status_field(p->pid, "VmRSS"); }

uint64_t server_proc_threads(const struct server_proc *p) {
  return status_field(p->pid, "Threads");
}

unsigned server_proc_fds(const struct server_proc *p) {
  char path[64];
  unsigned n = 0;
  snprintf(path, sizeof(path), "/proc/%d/fd", (int)p->pid);
  DIR *d = opendir(path);
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d));)
    n += e->d_name[0] != '.';
  closedir(d);
  return n;
}

uint64_t server_proc_cpu_ms(const struct server_proc *p) {
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)p->pid);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  /* After the command name (in parentheses, perhaps with spaces): field 3
   * (state) on; utime and stime are fields 14 and 15. */
  char *s = strrchr(buf, ')');
  assert_non_null(s);
  unsigned long long ut = 0, st = 0;
  assert_int_equal(sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
                          &st),
                   2);
  long hz = sysconf(_SC_CLK_TCK);
  return (uint64_t)(ut + st) * 1000 / (uint64_t)(hz > 0 ? hz : 100);
}

uint64_t server_proc_udp_drops(const struct server_proc *p) {
  char line[512], want[32];
  uint64_t drops = 0;
  /* 127.0.0.1 as the kernel prints it (host byte order, little-endian). */
  snprintf(want, sizeof(want), "0100007F:%04X", (unsigned)p->port);
  FILE *f = fopen("/proc/net/udp", "r");
  if (!f)
    return 0;
  while (fgets(line, sizeof(line), f)) {
    char local[64];
    if (sscanf(line, " %*s %63s", local) != 1 || strcmp(local, want) != 0)
      continue;
    char *last = strrchr(line, ' '); /* drops: the last field */
    if (last)
      drops = strtoull(last + 1, NULL, 10);
  }
  fclose(f);
  return drops;
}

static void *sample(void *arg) {
  struct server_proc *p = arg;
  while (!__atomic_load_n(&p->stop, __ATOMIC_ACQUIRE)) {
    uint64_t rss = server_proc_rss_kib(p);
    uint64_t peak = __atomic_load_n(&p->rss_peak_kib, __ATOMIC_RELAXED);
    while (rss > peak && !__atomic_compare_exchange_n(&p->rss_peak_kib, &peak, rss, false,
                                                      __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    sleep_ms(5);
  }
  return NULL;
}

void server_proc_peak_reset(struct server_proc *p) {
  char path[64];
  snprintf(path, sizeof(path), "/proc/%d/clear_refs", (int)p->pid);
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  p->hwm_resettable = fd >= 0 && write(fd, "5", 1) == 1; /* 5: reset VmHWM */
  if (fd >= 0)
    close(fd);
  __atomic_store_n(&p->rss_peak_kib, server_proc_rss_kib(p), __ATOMIC_RELAXED);
}

uint64_t server_proc_peak_kib(struct server_proc *p) {
  uint64_t peak = __atomic_load_n(&p->rss_peak_kib, __ATOMIC_RELAXED);
  uint64_t hwm = p->hwm_resettable ? status_field(p->pid, "VmHWM") : 0;
  return hwm > peak ? hwm : peak;
}

/* environ with env's entries added, replacing those of the same name. */
static char **make_env(const char *const *env) {
  size_t n = 0, k = 0, add = 0;
  while (environ[n])
    n++;
  while (env[add])
    add++;
  char **out = calloc(n + add + 1, sizeof(*out));
  assert_non_null(out);
  for (size_t i = 0; i < n; i++) {
    bool replaced = false;
    for (size_t j = 0; j < add && !replaced; j++) {
      size_t len = (size_t)(strchr(env[j], '=') - env[j]) + 1;
      replaced = strncmp(environ[i], env[j], len) == 0;
    }
    if (!replaced)
      out[k++] = environ[i];
  }
  for (size_t j = 0; j < add; j++)
    out[k++] = (char *)env[j];
  return out;
}

void server_proc_start(struct server_proc *p, const char *exe, const char *const *env) {
  memset(p, 0, sizeof(*p));
  snprintf(p->log, sizeof(p->log), "/tmp/hostile-server-XXXXXX");
  int log = mkstemp(p->log);
  assert_true(log >= 0);
  char **envp = make_env(env);
  char *argv[] = {(char *)exe, (char *)"server", (char *)"--listen", (char *)"127.0.0.1:0", NULL};
  pid_t parent = getpid();
  p->pid = fork();
  assert_true(p->pid >= 0);
  if (p->pid == 0) {
    /* Only async-signal-safe calls until the exec. */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent || dup2(log, 2) < 0)
      _exit(127);
    execve(exe, argv, envp);
    _exit(127);
  }
  free(envp);
  close(log);
  /* tether-echo: "listening on port N" once the listener is up. */
  for (int i = 0; i < 1000 && p->port == 0; i++) {
    char buf[4096];
    FILE *f = fopen(p->log, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *at = strstr(buf, "listening on port ");
    if (at)
      p->port = atoi(at + strlen("listening on port "));
    else if (!server_proc_alive(p))
      break;
    else
      sleep_ms(10);
  }
  if (p->port == 0)
    server_proc_dump_log(p);
  assert_true(p->port > 0);
  snprintf(p->port_s, sizeof(p->port_s), "%d", p->port);
  server_proc_peak_reset(p);
  assert_int_equal(pthread_create(&p->sampler, NULL, sample, p), 0);
}

bool server_proc_alive(struct server_proc *p) {
  if (p->exited)
    return false;
  if (waitpid(p->pid, &p->status, WNOHANG) == 0)
    return true;
  p->exited = true;
  return false;
}

int server_proc_stop(struct server_proc *p) {
  __atomic_store_n(&p->stop, 1, __ATOMIC_RELEASE);
  if (p->sampler)
    pthread_join(p->sampler, NULL);
  p->sampler = 0;
  if (p->pid > 0 && server_proc_alive(p)) {
    (void)kill(p->pid, SIGTERM);
    /* tether-echo ends its sessions and exits at once; 10 s at most. */
    for (int i = 0; i < 1000 && server_proc_alive(p); i++)
      sleep_ms(10);
    if (server_proc_alive(p)) {
      (void)kill(p->pid, SIGKILL);
      (void)waitpid(p->pid, &p->status, 0);
      p->exited = true;
    }
  }
  return p->status;
}

void server_proc_dump_log(const struct server_proc *p) {
  char buf[4096];
  FILE *f = fopen(p->log, "r");
  if (!f)
    return;
  fprintf(stderr, "---- server log (%s) ----\n", p->log);
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
    fwrite(buf, 1, n, stderr);
  fprintf(stderr, "---- end of server log ----\n");
  fclose(f);
}
