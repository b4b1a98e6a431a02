/* libc's own functions, found with dlsym(RTLD_NEXT). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "engine.h"
#include "preload.h"

struct real_fns real;
__thread int tp_inside __attribute__((tls_model("initial-exec")));

static void *must(const char *name) {
  void *p = dlsym(RTLD_NEXT, name);
  if (!p) {
    static const char msg[] = "libtether-preload: a libc function is missing\n";
    (void)!write(2, msg, sizeof(msg) - 1);
    abort();
  }
  return p;
}

void *tp_next(const char *name) { return must(name); }

void real_init(void) {
  if (__atomic_load_n(&real.pthread_create, __ATOMIC_ACQUIRE))
    return;
#define R(name) *(void **)&real.name = must(#name)
  R(socket); R(bind); R(listen); R(connect); R(accept); R(accept4);
  R(read); R(write); R(readv); R(writev); R(recv); R(send); R(recvfrom); R(sendto);
  R(recvmsg); R(sendmsg); R(sendfile); R(close); R(shutdown); R(dup); R(dup2); R(dup3);
  R(fcntl); R(ioctl); R(getsockopt); R(setsockopt); R(getpeername); R(getsockname);
  R(poll); R(ppoll); R(select); R(pselect); R(epoll_create); R(epoll_create1); R(epoll_ctl);
  R(epoll_wait); R(epoll_pwait); R(recvmmsg); R(sendmmsg); R(splice); R(syscall); R(preadv2); R(pwritev2);
  R(execve); R(execv); R(execvp); R(execvpe); R(fexecve); R(_exit); R(_Exit);
#undef R
  engine_ppoll = real.ppoll; /* the engine's waits must not come back here */
  /* Newer than some libcs: optional. */
  *(void **)&real.close_range = dlsym(RTLD_NEXT, "close_range");
  *(void **)&real.closefrom = dlsym(RTLD_NEXT, "closefrom");
  *(void **)&real.epoll_pwait2 = dlsym(RTLD_NEXT, "epoll_pwait2");
  *(void **)&real.fcntl64 = dlsym(RTLD_NEXT, "fcntl64");
  if (!real.fcntl64)
    real.fcntl64 = real.fcntl;
  void *pc = must("pthread_create");
  __atomic_store_n((void **)&real.pthread_create, pc, __ATOMIC_RELEASE);
}
