#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine.h"

void config_defaults(struct tether_config *cfg) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->heartbeat_ms = 1000;
  cfg->suspend_ms = 3000;
  cfg->reconnect_max_ms = 1000;
  cfg->give_up_s = 86400;
  cfg->connect_timeout_ms = 10000;
  cfg->log_level = TETHER_LOG_WARN;
  cfg->retain_max = TETHER_RETAIN_MAX_DEFAULT;
  cfg->read_spin_us = 50;
  cfg->accept_backlog = ACCEPT_BACKLOG_DEFAULT;
  cfg->linger_s = 30;
  cfg->max_suspended = MAX_SUSPENDED_DEFAULT;
}

tether_config *tether_config_new(void) {
  tether_config *cfg = malloc(sizeof(*cfg));
  if (cfg)
    config_defaults(cfg);
  return cfg;
}

void tether_config_free(tether_config *cfg) {
  if (!cfg)
    return;
  wipe(cfg->psk, sizeof(cfg->psk));
  free(cfg);
}

/* Allowed range per option; times must leave room for their products. */
static int option_range(tether_option opt, int64_t *lo, int64_t *hi) {
  switch (opt) {
  case TETHER_OPT_HEARTBEAT_MS:
  case TETHER_OPT_SUSPEND_MS:
  case TETHER_OPT_RECONNECT_MAX_MS:
    *lo = 1, *hi = 3600 * 1000;
    return 0;
  case TETHER_OPT_CONNECT_TIMEOUT_MS:
    *lo = 1, *hi = 3600 * 1000;
    return 0;
  case TETHER_OPT_GIVE_UP_S:
    *lo = 0, *hi = 10LL * 365 * 86400;
    return 0;
  case TETHER_OPT_LOG_LEVEL:
    *lo = TETHER_LOG_NONE, *hi = TETHER_LOG_DEBUG;
    return 0;
  case TETHER_OPT_DURABLE:
    *lo = 0, *hi = 1;
    return 0;
  case TETHER_OPT_RETAIN_MAX_BYTES:
    *lo = 64 * 1024, *hi = (int64_t)1 << 40;
    return 0;
  case TETHER_OPT_READ_SPIN_US:
    *lo = 0, *hi = 1000;
    return 0;
  case TETHER_OPT_PEER_RCVBUF_MAX_BYTES: /* 0, or 64 KiB and up */
    *lo = 0, *hi = (int64_t)1 << 40;
    return 0;
  case TETHER_OPT_ACCEPT_BACKLOG:
    *lo = 1, *hi = 65535;
    return 0;
  case TETHER_OPT_LINGER_S:
    *lo = 0, *hi = 3600;
    return 0;
  case TETHER_OPT_MAX_SUSPENDED:
    *lo = 1, *hi = 1000000;
    return 0;
  }
  return -EINVAL;
}

int tether_config_set(tether_config *cfg, tether_option opt, int64_t value) {
  int64_t lo, hi;
  if (!cfg || option_range(opt, &lo, &hi) < 0 || value < lo || value > hi)
    return -EINVAL;
  if (opt == TETHER_OPT_PEER_RCVBUF_MAX_BYTES && value && value < 64 * 1024)
    return -EINVAL;
  switch (opt) {
  case TETHER_OPT_HEARTBEAT_MS: cfg->heartbeat_ms = (uint32_t)value; break;
  case TETHER_OPT_SUSPEND_MS: cfg->suspend_ms = (uint32_t)value; break;
  case TETHER_OPT_RECONNECT_MAX_MS: cfg->reconnect_max_ms = (uint32_t)value; break;
  case TETHER_OPT_GIVE_UP_S: cfg->give_up_s = (uint32_t)value; break;
  case TETHER_OPT_CONNECT_TIMEOUT_MS: cfg->connect_timeout_ms = (uint32_t)value; break;
  case TETHER_OPT_LOG_LEVEL: cfg->log_level = (int)value; break;
  case TETHER_OPT_DURABLE: cfg->durable = value != 0; break;
  case TETHER_OPT_RETAIN_MAX_BYTES: cfg->retain_max = (uint64_t)value; break;
  case TETHER_OPT_READ_SPIN_US: cfg->read_spin_us = (uint32_t)value; break;
  case TETHER_OPT_PEER_RCVBUF_MAX_BYTES: cfg->peer_rcvbuf_max = (uint64_t)value; break;
  case TETHER_OPT_ACCEPT_BACKLOG: cfg->accept_backlog = (uint32_t)value; break;
  case TETHER_OPT_LINGER_S: cfg->linger_s = (uint32_t)value; break;
  case TETHER_OPT_MAX_SUSPENDED: cfg->max_suspended = (uint32_t)value; break;
  }
  return 0;
}

int tether_config_get(const tether_config *cfg, tether_option opt, int64_t *value) {
  if (!cfg || !value)
    return -EINVAL;
  switch (opt) {
  case TETHER_OPT_HEARTBEAT_MS: *value = cfg->heartbeat_ms; return 0;
  case TETHER_OPT_SUSPEND_MS: *value = cfg->suspend_ms; return 0;
  case TETHER_OPT_RECONNECT_MAX_MS: *value = cfg->reconnect_max_ms; return 0;
  case TETHER_OPT_GIVE_UP_S: *value = cfg->give_up_s; return 0;
  case TETHER_OPT_CONNECT_TIMEOUT_MS: *value = cfg->connect_timeout_ms; return 0;
  case TETHER_OPT_LOG_LEVEL: *value = cfg->log_level; return 0;
  case TETHER_OPT_DURABLE: *value = cfg->durable; return 0;
  case TETHER_OPT_RETAIN_MAX_BYTES: *value = (int64_t)cfg->retain_max; return 0;
  case TETHER_OPT_READ_SPIN_US: *value = cfg->read_spin_us; return 0;
  case TETHER_OPT_PEER_RCVBUF_MAX_BYTES: *value = (int64_t)cfg->peer_rcvbuf_max; return 0;
  case TETHER_OPT_ACCEPT_BACKLOG: *value = cfg->accept_backlog; return 0;
  case TETHER_OPT_LINGER_S: *value = cfg->linger_s; return 0;
  case TETHER_OPT_MAX_SUSPENDED: *value = cfg->max_suspended; return 0;
  }
  return -EINVAL;
}

static int parse_level(const char *s, int64_t *out) {
  static const char *names[] = {"none", "error", "warn", "info", "debug"};
  for (int i = 0; i < 5; i++)
    if (strcasecmp(s, names[i]) == 0) {
      *out = i;
      return 0;
    }
  return -EINVAL;
}

static int parse_num(const char *s, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end != '\0')
    return -EINVAL;
  *out = v;
  return 0;
}

int tether_config_load_env(tether_config *cfg) {
  static const struct {
    const char *name;
    tether_option opt;
  } vars[] = {
      {"TETHER_HEARTBEAT_MS", TETHER_OPT_HEARTBEAT_MS},
      {"TETHER_SUSPEND_MS", TETHER_OPT_SUSPEND_MS},
      {"TETHER_RECONNECT_MAX_MS", TETHER_OPT_RECONNECT_MAX_MS},
      {"TETHER_GIVE_UP_S", TETHER_OPT_GIVE_UP_S},
      {"TETHER_CONNECT_TIMEOUT_MS", TETHER_OPT_CONNECT_TIMEOUT_MS},
      {"TETHER_LOG", TETHER_OPT_LOG_LEVEL},
      {"TETHER_DURABLE", TETHER_OPT_DURABLE},
      {"TETHER_RETAIN_MAX_BYTES", TETHER_OPT_RETAIN_MAX_BYTES},
      {"TETHER_READ_SPIN_US", TETHER_OPT_READ_SPIN_US},
      {"TETHER_PEER_RCVBUF_MAX_BYTES", TETHER_OPT_PEER_RCVBUF_MAX_BYTES},
      {"TETHER_ACCEPT_BACKLOG", TETHER_OPT_ACCEPT_BACKLOG},
      {"TETHER_LINGER_S", TETHER_OPT_LINGER_S},
      {"TETHER_MAX_SUSPENDED", TETHER_OPT_MAX_SUSPENDED},
  };
  tether_config tmp;
  if (!cfg)
    return -EINVAL;
  tmp = *cfg; /* all or nothing */
  for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
    const char *v = getenv(vars[i].name);
    int64_t x;
    if (!v || !*v)
      continue;
    int rc = vars[i].opt == TETHER_OPT_LOG_LEVEL ? parse_level(v, &x) : parse_num(v, &x);
    if (rc < 0 || tether_config_set(&tmp, vars[i].opt, x) < 0)
      return -EINVAL;
  }
  *cfg = tmp;
  wipe(&tmp, sizeof(tmp));
  return 0;
}

int tether_config_set_psk(tether_config *cfg, const void *key, size_t len) {
  if (!cfg || len > PSK_MAX || (len && !key))
    return -EINVAL;
  wipe(cfg->psk, sizeof(cfg->psk));
  if (len)
    memcpy(cfg->psk, key, len);
  cfg->psk_len = len;
  return 0;
}

void tether_config_set_event_base(tether_config *cfg, struct event_base *base) {
  if (cfg)
    cfg->base = base;
}

void tether_config_set_state_cb(tether_config *cfg, tether_state_cb cb, void *arg) {
  if (!cfg)
    return;
  cfg->state_cb = cb;
  cfg->state_cb_arg = arg;
}
