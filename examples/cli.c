#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

/* Parses decimal digits only: strtoull would also take "-1", " 7", "0x10". */
static int parse_digits(const char *s, size_t n, uint64_t *out) {
  uint64_t v = 0;

  if (n == 0)
    return -EINVAL;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9')
      return -EINVAL;
    unsigned d = (unsigned)(s[i] - '0');
    if (v > (UINT64_MAX - d) / 10)
      return -EINVAL;
    v = v * 10 + d;
  }
  *out = v;
  return 0;
}

int cli_parse_hostport(const char *arg, struct cli_hostport *out) {
  const char *host, *colon;
  size_t host_len;
  uint64_t port;

  if (arg[0] == '[') {
    const char *close = strchr(arg, ']');
    if (close == NULL || close[1] != ':')
      return -EINVAL;
    host = arg + 1;
    host_len = (size_t)(close - host);
    colon = close + 1;
    if (host_len == 0)
      return -EINVAL;
  } else {
    colon = strrchr(arg, ':');
    if (colon == NULL)
      return -EINVAL;
    host = arg;
    host_len = (size_t)(colon - arg);
    /* A bare IPv6 address is ambiguous ("::1:80"): require brackets. */
    if (memchr(host, ':', host_len) != NULL)
      return -EINVAL;
  }
  if (host_len >= sizeof(out->host))
    return -EINVAL;
  if (parse_digits(colon + 1, strlen(colon + 1), &port) < 0 || port > 65535)
    return -EINVAL;

  memcpy(out->host, host, host_len);
  out->host[host_len] = '\0';
  snprintf(out->port, sizeof(out->port), "%" PRIu64, port);
  return 0;
}

const char *cli_format_hostport(const struct cli_hostport *hp, char *buf,
                                size_t len) {
  if (strchr(hp->host, ':') != NULL)
    snprintf(buf, len, "[%s]:%s", hp->host, hp->port);
  else
    snprintf(buf, len, "%s:%s", hp->host, hp->port);
  return buf;
}

int cli_parse_size(const char *arg, uint64_t *out) {
  static const struct {
    const char *suffix;
    unsigned shift;
  } units[] = {
      {"", 0},     {"B", 0},   {"K", 10},   {"KB", 10},  {"KiB", 10},
      {"M", 20},   {"MB", 20}, {"MiB", 20}, {"G", 30},   {"GB", 30},
      {"GiB", 30}, {"T", 40},  {"TB", 40},  {"TiB", 40},
  };
  size_t n = strspn(arg, "0123456789");
  uint64_t v;

  if (parse_digits(arg, n, &v) < 0 || v == 0)
    return -EINVAL;
  for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
    if (strcasecmp(arg + n, units[i].suffix) != 0)
      continue;
    if (v > (UINT64_MAX >> units[i].shift))
      return -EINVAL;
    *out = v << units[i].shift;
    return 0;
  }
  return -EINVAL;
}

int cli_parse_uint(const char *arg, uint64_t min, uint64_t max, uint64_t *out) {
  uint64_t v;

  if (parse_digits(arg, strlen(arg), &v) < 0 || v < min || v > max)
    return -EINVAL;
  *out = v;
  return 0;
}

uint64_t cli_now_ns(void) {
  struct timespec ts;

  /* CLOCK_MONOTONIC cannot fail with a valid pointer on Linux. */
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void cli_json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"':
      fputs("\\\"", f);
      break;
    case '\\':
      fputs("\\\\", f);
      break;
    case '\n':
      fputs("\\n", f);
      break;
    case '\r':
      fputs("\\r", f);
      break;
    case '\t':
      fputs("\\t", f);
      break;
    default:
      if (*p < 0x20 || *p == 0x7f)
        fprintf(f, "\\u%04x", *p);
      else
        fputc(*p, f);
    }
  }
  fputc('"', f);
}

void cli_json_double(FILE *f, double v) {
  if (isfinite(v))
    fprintf(f, "%.6g", v);
  else
    fputs("null", f);
}

void cli_print_stats_json(FILE *f, const tether_stats *st) {
  fprintf(f,
          "{\"reconnects\":%" PRIu64 ",\"bytes_sent\":%" PRIu64
          ",\"bytes_received\":%" PRIu64 ",\"bytes_resent\":%" PRIu64
          ",\"suspended_ms\":%" PRIu64 "}\n",
          st->reconnects, st->bytes_sent, st->bytes_received, st->bytes_resent,
          st->suspended_ns / 1000000u);
  fflush(f);
}

void cli_print_error(const char *prog, const char *what, int err) {
  fprintf(stderr, "%s: %s: %s (%s)\n", prog, what, tether_strerror(err),
          tether_err_name(err));
}

void cli_print_addr_error(const char *prog, const char *what,
                          const struct cli_hostport *hp, int err) {
  char addr[CLI_HOSTPORT_MAX], buf[CLI_HOSTPORT_MAX + 64];

  snprintf(buf, sizeof(buf), "%s %s", what,
           cli_format_hostport(hp, addr, sizeof(addr)));
  cli_print_error(prog, buf, err);
}

int cli_config_new(const char *prog, int durable, tether_config **out) {
  tether_config *cfg = tether_config_new();
  int r;

  if (cfg == NULL) {
    r = -ENOMEM;
    cli_print_error(prog, "cannot create a configuration", r);
    return r;
  }
  /* Done here rather than by tether_ctx_new(NULL) so that a typo in the
   * environment is not reported as a bare "Invalid argument". */
  r = tether_config_load_env(cfg);
  if (r < 0) {
    cli_print_error(
        prog, "malformed TETHER_* environment variable (see tether(7))", r);
    goto fail;
  }
  if (durable) {
    r = tether_config_set(cfg, TETHER_OPT_DURABLE, 1);
    if (r < 0) {
      cli_print_error(prog, "cannot enable durable sessions", r);
      goto fail;
    }
  }
  *out = cfg;
  return 0;
fail:
  tether_config_free(cfg);
  return r;
}

int cli_ctx_new(const char *prog, tether_ctx **out) {
  tether_config *cfg;
  int r = cli_config_new(prog, 0, &cfg);

  if (r < 0)
    return r;
  r = tether_ctx_new(cfg, out);
  if (r < 0)
    cli_print_error(prog, "cannot create a context", r);
  tether_config_free(cfg);
  return r;
}

int cli_usage_error(const char *prog, const char *fmt, ...) {
  va_list ap;

  fprintf(stderr, "%s: ", prog);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\nTry '%s --help'.\n", prog);
  return CLI_EXIT_USAGE;
}

int cli_command_arg(int argc, char **argv, const char *prog, void (*usage)(FILE *),
                    const char *missing) {
  if (argc < 2)
    return cli_usage_error(prog, "%s", missing);
  if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
    usage(stdout);
    return CLI_EXIT_OK;
  }
  if (strcmp(argv[1], "-V") == 0 || strcmp(argv[1], "--version") == 0) {
    printf("%s %s\n", prog, tether_version());
    return CLI_EXIT_OK;
  }
  return -1;
}

int cli_getopt_error(const char *prog, int c, char *const argv[]) {
  const char *arg = argv[optind - 1]; /* the word getopt just consumed */

  if (c == ':')
    return cli_usage_error(prog, "option '%s' needs a value", arg);
  if (optopt != 0)
    return cli_usage_error(prog, "unknown option '-%c'", optopt);
  return cli_usage_error(prog, "unknown option '%s'", arg);
}

/* ---- plain TCP ---- */

int cli_tcp_nodelay(int fd) {
  int one = 1;

  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
    return -errno;
  return 0;
}

static int bind_listen(int fd, const struct addrinfo *a) {
  int one = 1;

  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
      bind(fd, a->ai_addr, a->ai_addrlen) < 0 || listen(fd, 128) < 0)
    return -errno;
  return 0;
}

static int connect_nodelay(int fd, const struct addrinfo *a) {
  if (connect(fd, a->ai_addr, a->ai_addrlen) < 0)
    return -errno;
  return cli_tcp_nodelay(fd);
}

int cli_tcp_socket(const char *prog, const struct cli_hostport *hp,
                   int passive) {
  struct addrinfo hints = {.ai_family = AF_UNSPEC,
                           .ai_socktype = SOCK_STREAM,
                           .ai_flags = passive ? AI_PASSIVE : 0};
  struct addrinfo *ai = NULL;
  int fd = -1, r;

  r = getaddrinfo(hp->host[0] ? hp->host : NULL, hp->port, &hints, &ai);
  if (r != 0) {
    char addr[CLI_HOSTPORT_MAX];
    int err = r == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
    fprintf(stderr, "%s: %s: %s\n", prog,
            cli_format_hostport(hp, addr, sizeof(addr)), gai_strerror(r));
    return err;
  }
  r = -EADDRNOTAVAIL;
  for (struct addrinfo *a = ai; a != NULL; a = a->ai_next) {
    fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      r = -errno;
      continue;
    }
    r = passive ? bind_listen(fd, a) : connect_nodelay(fd, a);
    if (r == 0)
      break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(ai);
  if (fd < 0)
    cli_print_addr_error(
        prog, passive ? "cannot listen on" : "cannot connect to", hp, r);
  return fd < 0 ? r : fd;
}

int cli_tcp_port(int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);

  if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
    return -errno;
  if (ss.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

int cli_err_is_retry(int err) {
  return err == -EAGAIN || err == -EINTR; /* EWOULDBLOCK == EAGAIN here */
}

/* Sleeps until fd is ready for events; 0 or -errno. */
static int wait_ready(int fd, short events) {
  struct pollfd pfd = {.fd = fd, .events = events};

  if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
    return -errno;
  return 0;
}

int cli_fd_write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;

  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      int err = -errno;
      if (!cli_err_is_retry(err))
        return err;
      /* Also covers a descriptor someone made non-blocking. */
      if (err != -EINTR && (err = wait_ready(fd, POLLOUT)) < 0)
        return err;
      continue;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

int cli_session_write_all(tether_session *s, const void *buf, size_t len) {
  const char *p = buf;

  while (len > 0) {
    ssize_t n = tether_write(s, p, len);
    if (n < 0) {
      int err = (int)n;
      if (!cli_err_is_retry(err))
        return err;
      if (err != -EINTR && (err = wait_ready(tether_fd(s), POLLOUT)) < 0)
        return err;
      continue;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

/* ---- resources of processes (tether-bench) ---- */

struct cli_cpu cli_cpu_self(void) {
  struct rusage ru;
  struct cli_cpu c = {0, 0};
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    c.user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
    c.sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
  }
  return c;
}

struct cli_cpu cli_cpu_of(pid_t pid) {
  struct cli_cpu c = {0, 0};
  char path[64], buf[1024];
  snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "re");
  if (!f)
    return c;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = strrchr(buf, ')'); /* the name may hold spaces */
  unsigned long long ut, st;
  long hz = sysconf(_SC_CLK_TCK);
  /* After the name: state, then fields 4..13, then utime and stime. */
  if (p && hz > 0 &&
      sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) == 2) {
    c.user = (double)ut / (double)hz;
    c.sys = (double)st / (double)hz;
  }
  return c;
}

void cli_raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    (void)setrlimit(RLIMIT_NOFILE, &rl);
  }
}

double cli_rss_bytes(pid_t pid) {
  char path[64], line[256];
  double kib = 0;
  snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "re");
  if (!f)
    return 0;
  while (fgets(line, sizeof(line), f))
    if (sscanf(line, "VmRSS: %lf kB", &kib) == 1)
      break;
  fclose(f);
  return kib * 1024;
}


struct event_base *cli_event_base(void) {
  struct event_config *ec = event_config_new();
  struct timeval slice = {0, 50000};
  struct event_base *base = NULL;

  if (ec && event_config_set_max_dispatch_interval(ec, &slice, -1, 1) == 0)
    base = event_base_new_with_config(ec);
  event_config_free(ec);
  if (base && event_base_priority_init(base, 2) < 0) {
    event_base_free(base);
    base = NULL;
  }
  return base;
}
