#include <stdarg.h>
#include <stdio.h>
#include <unistd.h>

#include "engine.h"

void tlog(const struct tether_ctx *ctx, int level, const char *fmt, ...) {
  static const char *names[] = {"", "error", "warn", "info", "debug"};
  if (!ctx || level > ctx->cfg.log_level || level <= TETHER_LOG_NONE)
    return;
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  /* One write per line, so lines from threads and processes never mix. */
  char line[600];
  int n = snprintf(line, sizeof(line), "tether[%d] %s: %s\n", (int)getpid(), names[level], msg);
  if (n > 0)
    (void)!write(STDERR_FILENO, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
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
