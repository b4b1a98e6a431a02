#include <errno.h>
#include <string.h>

#include "engine.h"

const char *tether_version(void) { return TETHER_VERSION_STRING; }

const char *tether_strerror(int err) {
  switch (err) {
#define X(name, value, kind, msg) \
  case value:                     \
    return msg;
    TETHER_ERROR_MAP(X)
#undef X
  case 0:
    return "success";
  default:
    break;
  }
  if (err < 0 && err > -4096) {
    /* strerrordesc_np is thread-safe and returns a static string. */
    const char *s = strerrordesc_np(-err);
    if (s)
      return s;
  }
  return "unknown error";
}

const char *tether_err_name(int err) {
  switch (err) {
#define X(name, value, kind, msg) \
  case value:                     \
    return #name;
    TETHER_ERROR_MAP(X)
#undef X
  default:
    break;
  }
  if (err < 0 && err > -4096) {
    const char *s = strerrorname_np(-err);
    if (s)
      return s;
  }
  return "UNKNOWN";
}

tether_errkind tether_err_kind(int err) {
  if (err >= 0)
    return TETHER_ERRKIND_NONE;
  switch (err) {
#define X(name, value, kind, msg) \
  case value:                     \
    return kind;
    TETHER_ERROR_MAP(X)
#undef X
  case -EAGAIN:
  case -EINTR:
  case -ETIMEDOUT:
  case -ENOMEM:
  case -ENOBUFS:
  case -ECONNREFUSED:
  case -EHOSTUNREACH:
  case -ENETUNREACH:
    return TETHER_ERRKIND_TRANSIENT;
  case -EINVAL:
  case -EBADF:
  case -EFAULT:
  case -ENOTSUP:
    return TETHER_ERRKIND_USAGE;
  default:
    return TETHER_ERRKIND_FINAL;
  }
}
