/* syscall(3): system calls made through the C library's generic wrapper
 * (by programs, and by libraries such as liburing) rather than through the
 * named functions.
 *
 * The calls that move a session's bytes, end it, or copy its descriptor go
 * to their interposed versions, so that a session's number behaves the same
 * whichever way it is called; they leave other descriptors to the kernel as
 * before.  io_uring_setup is reported (once): what a ring does with a
 * session's descriptor never passes through the C library, so its bytes
 * would bypass the session.  Everything else goes to the kernel unchanged.
 * A raw `syscall` instruction (static binaries, Go, liburing built without
 * libc) is invisible: see tether(7), PRELOAD. */
#include <stdarg.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "preload.h"

static void warn_io_uring(void) {
  static int warned;
  if (__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
    return;
  tp_warn("this program uses io_uring, which tether cannot see: its TCP connections stay "
          "correct only if it moves their bytes with the usual calls (see tether(7), PRELOAD)");
}

EXPORT long syscall(long nr, ...) {
  READY();
  /* Every system call takes at most six word-sized arguments; reading all
   * six is how a generic wrapper forwards them. */
  long a[6];
  va_list ap;
  va_start(ap, nr);
  for (int i = 0; i < 6; i++)
    a[i] = va_arg(ap, long);
  va_end(ap);
  if (!tp_inside) {
    int fd = (int)a[0];
    switch (nr) {
    case SYS_read: return read(fd, (void *)a[1], (size_t)a[2]);
    case SYS_write: return write(fd, (const void *)a[1], (size_t)a[2]);
    case SYS_readv: return readv(fd, (const struct iovec *)a[1], (int)a[2]);
    case SYS_writev: return writev(fd, (const struct iovec *)a[1], (int)a[2]);
    case SYS_recvfrom:
      return recvfrom(fd, (void *)a[1], (size_t)a[2], (int)a[3], (struct sockaddr *)a[4],
                      (socklen_t *)a[5]);
    case SYS_sendto:
      return sendto(fd, (const void *)a[1], (size_t)a[2], (int)a[3],
                    (const struct sockaddr *)a[4], (socklen_t)a[5]);
    case SYS_recvmsg: return recvmsg(fd, (struct msghdr *)a[1], (int)a[2]);
    case SYS_sendmsg: return sendmsg(fd, (const struct msghdr *)a[1], (int)a[2]);
    case SYS_sendfile: return sendfile(fd, (int)a[1], (off_t *)a[2], (size_t)a[3]);
    case SYS_shutdown: return shutdown(fd, (int)a[1]);
    case SYS_close: return close(fd);
    case SYS_dup: return dup(fd);
    case SYS_dup2: return dup2(fd, (int)a[1]);
    case SYS_dup3: return dup3(fd, (int)a[1], (int)a[2]);
    case SYS_io_uring_setup: warn_io_uring(); break;
    default: break;
    }
  }
  return real.syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
}
