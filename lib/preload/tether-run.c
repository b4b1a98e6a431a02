/* tether-run: runs a program with libtether-preload.so, so that its TCP
 * connections become tether sessions (see tether-run(1)).  Options map to
 * TETHER_* environment variables, which child processes inherit. */
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tether/tether.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: tether-run [OPTIONS] [--] PROGRAM [ARGS...]\n"
          "  --heartbeat-ms N        TETHER_HEARTBEAT_MS\n"
          "  --suspend-ms N          TETHER_SUSPEND_MS\n"
          "  --reconnect-max-ms N    TETHER_RECONNECT_MAX_MS\n"
          "  --give-up-s N           TETHER_GIVE_UP_S\n"
          "  --connect-timeout-ms N  TETHER_CONNECT_TIMEOUT_MS\n"
          "  --probe-ms N            TETHER_PROBE_MS (least wait for a probe's answer)\n"
          "  --probe-ports LIST      TETHER_PROBE_PORTS (UDP services' ports probed anyway)\n"
          "  --accept-wait-ms N      TETHER_ACCEPT_WAIT_MS\n"
          "  --read-spin-us N        TETHER_READ_SPIN_US (0: waits never spin)\n"
          "  --accept-backlog N      TETHER_ACCEPT_BACKLOG (sessions queued for accept)\n"
          "  --exclude LIST          TETHER_EXCLUDE (addresses/ports left plain)\n"
          "  --log LEVEL             TETHER_LOG: none, error, warn, info, debug\n"
          "  --preload PATH          the interposer (default: found next to tether-run)\n"
          "  -h, --help              this text\n"
          "  --version               the version\n");
}

static bool readable(const char *p) { return access(p, R_OK) == 0; }

static const char *find_preload(const char *opt, char *buf, size_t len) {
  if (opt)
    return opt;
  const char *env = getenv("TETHER_PRELOAD_LIB");
  if (env && *env)
    return env;
  char self[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  if (n > 0) {
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash) {
      *slash = '\0';
      static const char *rel[] = {"/libtether-preload.so", "/../lib/preload/libtether-preload.so"};
      for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
        if (strlen(self) + strlen(rel[i]) >= len)
          continue;
        strcpy(buf, self);
        strcat(buf, rel[i]);
        if (readable(buf))
          return buf;
      }
    }
  }
  return TETHER_PRELOAD_INSTALLED;
}

/* The program's path as execvp would find it, or NULL. */
static const char *which(const char *prog, char *buf, size_t len) {
  if (strchr(prog, '/'))
    return prog;
  const char *path = getenv("PATH");
  if (!path)
    path = "/usr/local/bin:/usr/bin:/bin";
  while (*path) {
    size_t n = strcspn(path, ":");
    snprintf(buf, len, "%.*s/%s", (int)n, path, prog);
    if (access(buf, X_OK) == 0)
      return buf;
    path += n + (path[n] == ':');
  }
  return NULL;
}

/* What the preload cannot do for this program, said before it runs. */
static void check_program(const char *path) {
  struct stat st;
  if (stat(path, &st) == 0 && (st.st_mode & (S_ISUID | S_ISGID)))
    fprintf(stderr, "tether-run: warning: %s is setuid/setgid: tether stays off inside it\n", path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return;
  Elf64_Ehdr eh;
  if (read(fd, &eh, sizeof(eh)) == (ssize_t)sizeof(eh) && memcmp(eh.e_ident, ELFMAG, SELFMAG) == 0 &&
      eh.e_ident[EI_CLASS] == ELFCLASS64 && eh.e_phentsize == sizeof(Elf64_Phdr)) {
    bool interp = false;
    for (int i = 0; i < eh.e_phnum && !interp; i++) {
      Elf64_Phdr ph;
      if (pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + (uint64_t)i * sizeof(ph))) !=
          (ssize_t)sizeof(ph))
        break;
      interp = ph.p_type == PT_INTERP;
    }
    if (!interp)
      fprintf(stderr, "tether-run: warning: %s is statically linked: its connections stay "
              "plain TCP\n", path);
  }
  close(fd);
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"heartbeat-ms", required_argument, NULL, 'H'},
      {"suspend-ms", required_argument, NULL, 'S'},
      {"reconnect-max-ms", required_argument, NULL, 'R'},
      {"give-up-s", required_argument, NULL, 'G'},
      {"connect-timeout-ms", required_argument, NULL, 'C'},
      {"probe-ms", required_argument, NULL, 'P'},
      {"probe-ports", required_argument, NULL, 'U'},
      {"accept-wait-ms", required_argument, NULL, 'A'},
      {"read-spin-us", required_argument, NULL, 'W'},
      {"accept-backlog", required_argument, NULL, 'B'},
      {"exclude", required_argument, NULL, 'x'},
      {"log", required_argument, NULL, 'l'},
      {"preload", required_argument, NULL, 'p'},
      {"help", no_argument, NULL, 'h'},
      {"version", no_argument, NULL, 'V'},
      {NULL, 0, NULL, 0},
  };
  const char *preload = NULL;
  int c;
  while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
    const char *var = NULL;
    switch (c) {
    case 'H': var = "TETHER_HEARTBEAT_MS"; break;
    case 'S': var = "TETHER_SUSPEND_MS"; break;
    case 'R': var = "TETHER_RECONNECT_MAX_MS"; break;
    case 'G': var = "TETHER_GIVE_UP_S"; break;
    case 'C': var = "TETHER_CONNECT_TIMEOUT_MS"; break;
    case 'P': var = "TETHER_PROBE_MS"; break;
    case 'U': var = "TETHER_PROBE_PORTS"; break;
    case 'A': var = "TETHER_ACCEPT_WAIT_MS"; break;
    case 'W': var = "TETHER_READ_SPIN_US"; break;
    case 'B': var = "TETHER_ACCEPT_BACKLOG"; break;
    case 'x': var = "TETHER_EXCLUDE"; break;
    case 'l': var = "TETHER_LOG"; break;
    case 'p': preload = optarg; break;
    case 'h': usage(stdout); return 0;
    case 'V': printf("tether-run %s\n", TETHER_VERSION_STRING); return 0;
    default: usage(stderr); return 2;
    }
    if (var && setenv(var, optarg, 1) < 0) {
      perror("tether-run: setenv");
      return 2;
    }
  }
  if (optind >= argc) {
    usage(stderr);
    return 2;
  }
  char buf[PATH_MAX], pbuf[PATH_MAX];
  preload = find_preload(preload, buf, sizeof(buf));
  if (!readable(preload)) {
    fprintf(stderr, "tether-run: cannot read %s: %s\n", preload, strerror(errno));
    return 127;
  }
  const char *old = getenv("LD_PRELOAD");
  size_t n = strlen(preload) + (old ? strlen(old) : 0) + 2;
  char *ld = malloc(n);
  if (!ld)
    return 127;
  snprintf(ld, n, "%s%s%s", preload, old && *old ? " " : "", old && *old ? old : "");
  setenv("LD_PRELOAD", ld, 1);
  const char *path = which(argv[optind], pbuf, sizeof(pbuf));
  if (path)
    check_program(path);
  execvp(argv[optind], argv + optind);
  fprintf(stderr, "tether-run: %s: %s\n", argv[optind], strerror(errno));
  return errno == ENOENT ? 127 : 126;
}
