#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "engine.h"

static void vtlog(const struct tether_ctx *ctx, int level, unsigned suppressed, const char *fmt,
                  va_list ap) {
  static const char *names[] = {"", "error", "warn", "info", "debug"};
  char msg[512];
  vsnprintf(msg, sizeof(msg), fmt, ap);
  /* One write per line, so lines from threads and processes never mix. */
  char line[640];
  int n = suppressed ? snprintf(line, sizeof(line), "tether[%d] %s: %s (%u similar suppressed)\n",
                                (int)getpid(), names[level], msg, suppressed)
                     : snprintf(line, sizeof(line), "tether[%d] %s: %s\n", (int)getpid(),
                                names[level], msg);
  if (n > 0)
    (void)!write(STDERR_FILENO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static bool enabled(const struct tether_ctx *ctx, int level) {
  return ctx && level <= ctx->cfg.log_level && level > TETHER_LOG_NONE;
}

void tlog(const struct tether_ctx *ctx, int level, const char *fmt, ...) {
  if (!enabled(ctx, level))
    return;
  va_list ap;
  va_start(ap, fmt);
  vtlog(ctx, level, 0, fmt, ap);
  va_end(ap);
}

void tlog_limited(const struct tether_ctx *ctx, struct log_limit *lim, int level, const char *fmt,
                  ...) {
  if (!enabled(ctx, level))
    return;
  uint64_t now = now_ns();
  if (now < lim->next_ns) {
    lim->suppressed++;
    return;
  }
  lim->next_ns = now + 1000000000ull;
  va_list ap;
  va_start(ap, fmt);
  vtlog(ctx, level, lim->suppressed, fmt, ap);
  va_end(ap);
  lim->suppressed = 0;
}

const char *session_tag(const uint8_t id[SESSION_ID_LEN], char buf[17]) {
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 8; i++) {
    buf[2 * i] = hex[id[i] >> 4];
    buf[2 * i + 1] = hex[id[i] & 15];
  }
  buf[16] = '\0';
  return buf;
}
