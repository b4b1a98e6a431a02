/* The LD_PRELOAD interposer (libtether-preload.so): shared declarations.
 * Internal; never installed.
 *
 * Model.  Every TCP socket the program creates gets a `psock` that follows
 * it through its life: a fresh socket (PS_TCP), a connect in progress
 * (PS_CONNECTING), a tether session (PS_SESSION), a listener (PS_LISTEN), or
 * a connection that turned out plain (PS_PLAIN: every call passes straight
 * through).  A psock is reached through the fd table by any of its fd
 * numbers (the program's dup()s are aliases of one psock, as they are of one
 * open file in the kernel).
 *
 * fd stability.  The program's numbers never change: whenever the file
 * behind a psock changes (a placeholder while a connect or a resume is in
 * progress, the new socket after it), ps_swap() dup3()s the new file onto
 * every alias and moves the program's epoll registrations with it: they
 * belong to the open file, so each is deleted before and added again after.
 *
 * epoll.  Every registration in an epoll instance the program created is
 * made with tether's own 64-bit token as the event data (a slot in the
 * instance's table and a check value), and epoll_wait() translates the
 * token back to the program's data.  So the interposer knows which
 * registration each event belongs to: it drops events of registrations
 * that no longer exist, keeps EPOLLONESHOT registrations disarmed across
 * swaps (the kernel's one-shot state would be lost with the re-add), and
 * never lets a session's transport errors (EPOLLERR, EPOLLHUP) through.
 * Registrations of fds the interposer knows nothing about get a PS_OTHER
 * psock, so that their close is seen and their bookkeeping freed.
 *
 * Threads.  `tp_inside` is set while tether's own code runs (permanently on
 * its engine thread): every wrapper then passes straight to libc, so the
 * library's own read/write/poll/epoll calls are never interposed.
 *
 * Locks, in this order: g_lock (the list of all psocks), a session's locks
 * (engine.h), psock.lock, an epoll table's lock (innermost: nothing is
 * taken while it is held).  sp_lock (spawn.c) comes before all of them: it
 * is held for a whole posix_spawn.  The modules' leaf locks (pool_lock,
 * pl_lock, dest_lock, records_lock, fork.c's f_lock) nest nothing.
 *
 * fork.  sp_lock, g_lock and the leaf locks are held across fork()
 * (preload.c's atfork handlers), so that the child's copy of every list
 * they guard is whole, and released after it in both processes; the child
 * initialises every other lock afresh, psocks' and epoll tables' (their
 * holders may be the parent's other threads, which the child does not
 * have), and forgets what belongs to the parent's engine.
 *
 * Signals.  A handler of the program's that comes while its thread runs
 * tether's code or holds a lock of tether's is deferred until the thread
 * is out (signals.c). */
#ifndef TETHER_PRELOAD_H
#define TETHER_PRELOAD_H

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>

struct tether_session;
struct tether_ctx;
struct plisten;

/* ---- libc's own functions (real.c) ---- */

struct real_fns {
  int (*socket)(int, int, int);
  int (*bind)(int, const struct sockaddr *, socklen_t);
  int (*listen)(int, int);
  int (*connect)(int, const struct sockaddr *, socklen_t);
  int (*accept)(int, struct sockaddr *, socklen_t *);
  int (*accept4)(int, struct sockaddr *, socklen_t *, int);
  ssize_t (*read)(int, void *, size_t);
  ssize_t (*write)(int, const void *, size_t);
  ssize_t (*readv)(int, const struct iovec *, int);
  ssize_t (*writev)(int, const struct iovec *, int);
  ssize_t (*recv)(int, void *, size_t, int);
  ssize_t (*send)(int, const void *, size_t, int);
  ssize_t (*recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
  ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
  ssize_t (*recvmsg)(int, struct msghdr *, int);
  ssize_t (*sendmsg)(int, const struct msghdr *, int);
  ssize_t (*sendfile)(int, int, off_t *, size_t);
  int (*close)(int);
  int (*close_range)(unsigned, unsigned, int);
  int (*shutdown)(int, int);
  int (*dup)(int);
  int (*dup2)(int, int);
  int (*dup3)(int, int, int);
  int (*fcntl)(int, int, ...);
  int (*fcntl64)(int, int, ...);
  int (*ioctl)(int, unsigned long, ...);
  int (*getsockopt)(int, int, int, void *, socklen_t *);
  int (*setsockopt)(int, int, int, const void *, socklen_t);
  int (*getpeername)(int, struct sockaddr *, socklen_t *);
  int (*getsockname)(int, struct sockaddr *, socklen_t *);
  int (*poll)(struct pollfd *, nfds_t, int);
  int (*ppoll)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
  int (*select)(int, fd_set *, fd_set *, fd_set *, struct timeval *);
  int (*pselect)(int, fd_set *, fd_set *, fd_set *, const struct timespec *, const sigset_t *);
  int (*epoll_create)(int);
  int (*epoll_create1)(int);
  int (*epoll_ctl)(int, int, int, struct epoll_event *);
  int (*epoll_wait)(int, struct epoll_event *, int, int);
  int (*epoll_pwait)(int, struct epoll_event *, int, int, const sigset_t *);
  int (*epoll_pwait2)(int, struct epoll_event *, int, const struct timespec *, const sigset_t *);
  void (*closefrom)(int);
  int (*recvmmsg)(int, struct mmsghdr *, unsigned int, int, struct timespec *);
  int (*sendmmsg)(int, struct mmsghdr *, unsigned int, int);
  ssize_t (*splice)(int, loff_t *, int, loff_t *, size_t, unsigned int);
  long (*syscall)(long, ...);
  ssize_t (*preadv2)(int, const struct iovec *, int, off_t, int);
  ssize_t (*pwritev2)(int, const struct iovec *, int, off_t, int);
  int (*pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
  int (*execve)(const char *, char *const[], char *const[]);
  int (*execv)(const char *, char *const[]);
  int (*execvp)(const char *, char *const[]);
  int (*execvpe)(const char *, char *const[], char *const[]);
  int (*fexecve)(int, char *const[], char *const[]);
  void (*_exit)(int) __attribute__((noreturn));
  void (*_Exit)(int) __attribute__((noreturn));
};
extern struct real_fns real;
/* Resolves every pointer (idempotent; also run by the constructor). */
void real_init(void);
/* The next definition of a libc function (aborts if there is none). */
void *tp_next(const char *name);

/* An interposed libc entry point, and how each begins: a call may come
 * before our constructor ran (from another library's). */
#define EXPORT __attribute__((visibility("default")))
#define READY() \
  do { \
    if (__builtin_expect(!real.pthread_create, 0)) \
      real_init(); \
  } while (0)

/* Set while tether's own code runs on this thread.  A program's signal
 * that comes meanwhile is deferred to the TP_LEAVE that ends it
 * (signals.c). */
extern __thread int tp_inside __attribute__((tls_model("initial-exec")));
extern __thread int tp_deferred __attribute__((tls_model("initial-exec")));
void tp_run_deferred(void);
#define TP_ENTER() int tp_saved_ = tp_inside; tp_inside = 1
#define TP_LEAVE() \
  (tp_inside = tp_saved_, \
   __builtin_expect(tp_deferred != 0, 0) && !tp_inside ? tp_run_deferred() : (void)0)
/* Set around a section of tether's code that sleeps holding no lock (a
 * blocking connect): the program's handlers run at once there. */
extern __thread int tp_signals_now __attribute__((tls_model("initial-exec")));
/* A handler without SA_RESTART ran during the current data call: a wait
 * that follows ends with EINTR, as the kernel's would have (io.c). */
extern __thread bool tp_handler_ran __attribute__((tls_model("initial-exec")));
void signals_after_fork_child(void);

/* ---- psocks and the fd table (fdtable.c) ---- */

enum ps_kind {
  PS_TCP = 1,    /* a TCP socket not yet connected or listening */
  PS_CONNECTING, /* connect() in progress: detection and handshake */
  PS_SESSION,    /* a tether session */
  PS_LISTEN,     /* a listener accepting tether sessions and plain connections */
  PS_FAILED,     /* a connect that failed: conn_err until SO_ERROR reads it */
  PS_PLAIN,      /* plain TCP (or excluded): pass through */
  PS_ORPHAN,     /* inherited through fork, not yet claimed from the parent (fork.c) */
  PS_RELAY,      /* a session claimed from the parent: a stream socket it relays */
  PS_EPOLL,      /* an epoll instance of the program (its registrations are tracked) */
  PS_OTHER,      /* any other fd registered in a tracked epoll instance: pass through */
};

/* One epoll registration: one of a psock's fd numbers in one epoll
 * instance.  On the psock's list (psock.lock) and in the instance's table
 * (eptab.lock, which also guards events, data and disarmed). */
struct ereg {
  struct ereg *next;  /* the registered psock's list */
  struct psock *ep;   /* the epoll instance's psock */
  int fd;             /* the program's number */
  uint32_t slot;      /* index in ep->tab */
  uint32_t check;     /* the token's upper half */
  uint32_t events;    /* as the program gave them */
  epoll_data_t data;  /* as the program gave it */
  bool disarmed;      /* EPOLLONESHOT: fired, not yet re-armed by MOD */
  bool shut_told;     /* EPOLLET: the program's shutdown was reported */
};

/* An epoll instance's registrations, by token slot. */
struct eptab {
  pthread_mutex_t lock;
  int epfd;           /* one of the instance's numbers, for tether's own calls */
  struct ereg **slots;
  uint32_t nslots, cap;
  uint32_t *free;     /* free slot indexes below nslots */
  uint32_t nfree;
  uint32_t seq;       /* makes check values */
  /* A shutdown() of a registered session makes it ready as it does a TCP
   * socket, which the kernel cannot see: shut_any says some registration
   * may be ready that way (ep_add_shut), shut_efd (edge-triggered in the
   * instance, made on first need) wakes a thread already waiting. */
  int shut_efd;
  bool shut_any;
};

/* What epoll_wait learned about one returned event (see ep_translate). */
struct ep_hit {
  int fd;             /* the program's number */
  uint32_t events;    /* the registration's events */
  uint32_t slot, check;
};

struct sopt {
  int level, name;
  socklen_t len;
  uint8_t val[32];
};

#define PS_MAX_OPTS 24


struct psock {
  pthread_mutex_t lock; /* everything below */
  int kind;
  int family;
  bool nonblock; /* the program's O_NONBLOCK (per open file, like the kernel's) */
  bool bound;
  bool rd_shut, wr_shut;
  bool closed; /* every alias closed while a connect was in progress */
  int conn_err; /* pending SO_ERROR (positive errno) */
  int *aliases; /* the program's fd numbers for this psock */
  bool *alias_cloexec;
  int naliases, cap_aliases;
  struct ereg *regs;   /* this psock's epoll registrations */
  struct eptab *tab;   /* PS_EPOLL: the instance's registrations */
  uint64_t ep_spin_ns; /* PS_EPOLL: how long its next wait spins (epoll.c) */
  struct tether_session *s;
  struct plisten *pl;
  int placeholder_w; /* connecting: the WAIT pipe's write end, or -1 */
  int abort_efd;     /* connecting in a helper thread: wakes it when the program closes */
  struct sockaddr_storage local, peer; /* the endpoints the program sees */
  socklen_t local_len, peer_len;
  struct sopt opts[PS_MAX_OPTS]; /* options to carry to replacement sockets */
  int nopts;
  int opts_sock; /* the socket the options were last applied to */
  int rcvtimeo_ms, sndtimeo_ms; /* SO_RCVTIMEO/SO_SNDTIMEO, 0 = none */
  /* Sharing with forked children (fork.c).  serial names the psock across
   * fork (the child's copy has the same); kids counts children that
   * inherited the session and may still claim it, relays the claims being
   * served; own_fd is tether's own number of the session (an alias, made
   * when the program closes its last number while kids, relays or calls
   * hold the session; -1 otherwise), which keeps the session's app fd. */
  uint64_t serial;
  int kids, relays;
  int own_fd;
  int calls; /* data-path calls in progress (ps_hold): they hold the session too */
  bool free_pending; /* ps_free came during a call: the call's release frees it */
  struct psock *all_next, *all_prev; /* g_all */
};

extern pthread_mutex_t g_lock;
/* The modules' global locks (see the order above). */
extern pthread_mutex_t pool_lock, pl_lock, dest_lock, records_lock, sp_lock;

/* Sizes the table from RLIMIT_NOFILE.  0 or -ENOMEM. */
int fdt_init(void);
/* The psock behind fd, or NULL (lock-free). */
struct psock *fdt_get(int fd);
/* One past the highest number the table can hold. */
int fdt_limit(void);
void fdt_set(int fd, struct psock *ps);

struct psock *ps_new(int kind, int family);
/* Frees a psock with no aliases left (its memory stays a psock's: see
 * ps_hold). */
void ps_free(struct psock *ps);
/* For the length of one call on fd: true if ps (found by fdt_get(fd)) is
 * still fd's, and then a close of the program's last number meanwhile
 * keeps the session (on tether's own number, own_fd) until ps_release, as
 * the kernel keeps a socket that a call still uses. */
bool ps_hold(struct psock *ps, int fd);
void ps_release(struct psock *ps);

/* ps->lock held.  Adds/removes one of the program's numbers (and its table
 * entry).  remove returns how many aliases remain; it also forgets the
 * number's epoll registrations, without telling the kernel (the number may
 * name another file by now: see ps_close_regs). */
int ps_add_alias(struct psock *ps, int fd, bool cloexec);
int ps_remove_alias(struct psock *ps, int fd);
bool ps_has_alias(const struct psock *ps, int fd);
void ps_set_cloexec(struct psock *ps, int fd, bool cloexec);
bool ps_get_cloexec(const struct psock *ps, int fd);
/* A session's (or a connect's) numbers are close-on-exec in the kernel
 * whatever the program asked for (it sees its own setting): a session
 * cannot outlive the process image that runs it, so a new program must not
 * get its live socket (tether-run(1), EXEC). */
bool ps_exec_hidden(const struct psock *ps);
/* ps->lock held.  Points every alias at `file` (not consumed), keeping each
 * alias's close-on-exec flag and epoll registrations. */
void ps_swap(struct psock *ps, int file);

/* How many of the psock's numbers are the program's (own_fd aside). */
int ps_program_aliases(const struct psock *ps);
/* Whether a session must outlive the program's numbers: a forked child
 * holds it or may still claim it, or a call is still in progress on it. */
bool ps_shared(const struct psock *ps);

/* ---- epoll bookkeeping (fdtable.c) ---- */

/* Makes ep (a PS_EPOLL psock whose number is epfd) track registrations.
 * 0 or -ENOMEM. */
int ep_track(struct psock *ep, int epfd);
/* t->lock held.  epoll_ctl(epfd, op, fd, ev) on behalf of the program, fd
 * being one of t's numbers and epfd one of ep's: the kernel gets a token,
 * the table the program's event.  0 or a negative errno. */
int ep_ctl(struct psock *ep, struct psock *t, int epfd, int op, int fd,
           const struct epoll_event *ev);
/* Translates n events from the kernel in place into the program's, and
 * fills hits[] alongside.  Events of unknown or disarmed registrations are
 * dropped; a one-shot registration is marked disarmed.  Returns how many
 * events remain. */
int ep_translate(struct psock *ep, struct epoll_event *evs, int n, struct ep_hit *hits);
/* An event epoll_wait took was not passed on: a one-shot registration is
 * armed again, as if it had not fired. */
void ep_unfire(struct psock *ep, const struct ep_hit *hit);
/* ps->lock held.  The program shut ps (a session) down: every instance it
 * is registered in reports it ready, waking a thread that waits there. */
void ps_shut_notify(struct psock *ps);
/* Whether registrations of ep may be ready through a shutdown. */
bool ep_shut_pending(struct psock *ep);
/* Adds to the n events (and hits) what shutdowns made ready, as TCP
 * reports a shut socket: EPOLLIN|EPOLLRDHUP after SHUT_RD, EPOLLOUT after
 * SHUT_WR, EPOLLHUP after both; merged into an event of the same
 * registration, else appended (up to max).  Level-triggered registrations
 * stay ready, edge-triggered ones are reported once per shutdown, one-shot
 * ones fire once.  Returns the new count. */
int ep_add_shut(struct psock *ep, struct epoll_event *evs, struct ep_hit *hits, int n, int max);
/* ps->lock held.  The program is closing fd (still open): its
 * registrations are deleted from the kernel (which would keep them while
 * another number or tether still holds the file) and forgotten. */
void ps_close_regs(struct psock *ps, int fd);
/* An epoll instance's last number is being closed: forget its
 * registrations everywhere and free its table (g_lock is taken). */
void ep_forget(struct psock *ep);
/* The registrations of ps (for tests and the man page's claims). */
int ps_nregs(struct psock *ps);

/* Calls fn for every psock (g_lock held: fn must not take it). */
void fdt_each(void (*fn)(struct psock *ps, void *arg), void *arg);
/* The same if g_lock is free now (false if not: from a signal handler,
 * say). */
bool fdt_try_each(void (*fn)(struct psock *ps, void *arg), void *arg);
/* After fork, in the child: fresh psock and epoll table locks; sessions,
 * connects and listeners become orphans (owned by the parent), without the
 * parent's own_fd and without epoll registrations (the parent's, in
 * instances the two share). */
void fdt_after_fork_child(void);

/* ---- sessions shared with forked children (fork.c) ---- */

/* Parts of preload.c's atfork handlers: prepare (before the global locks
 * are taken), parent and child (after they are released).
 * fork_lock_relays takes f_lock last in prepare, fork_unlock_relays
 * releases it first after the fork. */
void fork_prepare(void);
void fork_parent(void);
void fork_child(void);
void fork_lock_relays(void);
void fork_unlock_relays(void);
/* Child: makes an orphan session a relay of the parent's (every number of
 * it then names one end of a stream socket the parent relays).  0, or a
 * negative errno (EBADF: not claimable; a warning says why). */
int fork_claim(struct psock *ps);
/* Child: the program closed the last number of an orphan it never claimed. */
void fork_release(struct psock *ps);
/* Child: a relay read EOF.  0 if the session really ended (the peer
 * closed), else the negative errno to report instead. */
int fork_relay_eof(struct psock *ps);
/* Child: the program closes the last number of a relay (a close, not a
 * crash: the parent may end the session gracefully). */
void fork_closing(struct psock *ps);
/* At a normal exit.  Child: every relay still open is closed by it.
 * Parent: relays whose children are gone are ended first (waited for up
 * to linger_s: what they hold may need a resume to pass). */
void fork_at_exit(unsigned linger_s);
/* Child: close_range/closefrom is about to close [first, last]: if the
 * channel to the parent is in it, orphans on fds 0-2 are claimed first. */
void fork_chan_closing(unsigned first, unsigned last);
/* Child, before exec: claims the orphans on fds 0-2 that survive exec. */
void fork_before_exec(void);
/* At start: the relays an exec handed this program on descriptors 0 to 2
 * (described in TETHER_RELAYS by the process that exec'd) answer for the
 * TCP connections they stand for. */
void relays_adopt(void);
/* Parent: a relay of session ps for a program spawned with posix_spawn
 * (spawn.c), which knows nothing of tether (its close is a close).  The
 * far end, or a negative errno. */
int fork_spawn_relay(struct psock *ps);
/* Child: accept() on a listener inherited from the parent (lps, the
 * program's number fd): the parent's engine accepts, and passes plain
 * connections as they are and relays sessions.  The new descriptor, a
 * negative errno (-EAGAIN if non-blocking and none waits), or -ENOTCONN
 * when there is no parent to ask (the caller accepts plain connections
 * from the socket itself). */
int fork_accept(struct psock *lps, int fd, struct sockaddr *addr, socklen_t *alen, int flags);
/* Parent: a forked child let go of a listener it inherited; the listener
 * ends if the program closed it too. */
void ps_listener_unref(struct psock *ps);
/* Whether an orphan is a session the child may claim (not a listener). */
static inline bool ps_orphan_session(const struct psock *ps) {
  return ps->kind == PS_ORPHAN && !ps->pl;
}
/* Closes one tracked number as close() does (sockets.c). */
int tp_close_tracked(struct psock *ps, int fd);

/* ---- detection of tether on the other side (detect.c) ---- */

#define PROBE_MAGIC "TTP1"
#define PROBE_LEN 16
enum { PROBE_ASK = 1, PROBE_YES = 2, PROBE_ANNOUNCE = 3, PROBE_CANCEL = 4 };

struct probe {
  uint8_t type;
  uint16_t port; /* the TCP source port the datagram speaks for */
  uint8_t nonce[8];
};
void probe_encode(const struct probe *p, uint8_t out[PROBE_LEN]);
/* 0, or -1 when dg is not a probe datagram. */
int probe_decode(const uint8_t *dg, size_t len, struct probe *p);

/* An address as 16 bytes (IPv4 as v4-mapped IPv6) and a port. */
struct ipport {
  uint8_t ip[16];
  uint16_t port;
};
bool ipport_from(const struct sockaddr *sa, struct ipport *out);
bool ipport_eq(const struct ipport *a, const struct ipport *b);

/* Server: connections announced by a probe at listener port lport,
 * expiring after a while. */
void probes_record(const struct ipport *who, int lport, uint64_t now_ms);

/* Whether a connection announced at lport is still to come. */
bool probes_expected(int lport, uint64_t now_ms);
/* Takes the record for `who` (true if there was one); with any_port, a
 * record of the same address with another port will do. */
bool probes_take(const struct ipport *who, uint64_t now_ms, bool any_port);
/* Server: the connection from `who` (descriptor fd) went to the program
 * as plain; whether one did, lately, and still lives (its late probe is
 * then left unanswered). */
void probes_handed_plain(const struct ipport *who, int fd, uint64_t now_ms);
bool probes_was_handed_plain(const struct ipport *who, uint64_t now_ms);

/* ---- what each destination is (dest.c) ---- */

enum dest_kind { DEST_UNKNOWN = 0, DEST_PLAIN, DEST_TETHER };
/* What the last probe to dst (address and port) found. */
enum dest_kind dest_get(const struct sockaddr *dst);
void dest_set(const struct sockaddr *dst, enum dest_kind kind);
/* A probe that got no answer in time (u, connected to dst's UDP port):
 * the engine listens for a late answer for a moment, which makes dst
 * tether's for the next connect.  Takes u. */
void dest_watch_late(struct tether_ctx *ctx, int u, const struct sockaddr *dst, socklen_t dstlen,
                     const uint8_t nonce[8]);
/* Whether a probe may go to this port number on UDP: not to well-known UDP
 * services, unless TETHER_PROBE_PORTS (parsed here: 0, or -EINVAL) names
 * the port. */
bool dest_probe_port(int port);
int dest_parse_probe_ports(const char *s);
/* In a child after fork: the parent's late watches are not ours. */
void dest_after_fork_child(void);

/* TETHER_EXCLUDE: parse once; true if the endpoint must stay plain. */
int exclude_parse(const char *spec);
bool excluded(const struct sockaddr *sa);

/* ---- the rest (preload.c, connect.c, listen.c, io.c, sockets.c) ---- */

/* A new psock for the program's number fd (any stale entry forgotten), or
 * NULL. */
struct psock *tp_track_new(int fd, int kind, int family, bool nonblock, bool cloexec);

extern bool tp_disabled;
/* Whether this is a child made by vfork(2) (or clone(CLONE_VM)): it shares
 * our memory but not our descriptors, and will only exec or _exit, so no
 * bookkeeping may change here (the parent's is the same memory).  A
 * system call: ask only about tracked numbers. */
bool tp_vforked(void);
/* "tether[PID] warn: MSG" on stderr. */
void tp_warn(const char *msg);
/* The process's context, made on first use; NULL if tether cannot run. */
struct tether_ctx *tp_ctx(void);
uint64_t tp_now_ms(void);
/* TETHER_PROBE_MS: how long a client waits at least for a probe's answer
 * beyond the TCP connect's own duration (-1, unset: see connect.c). */
extern int tp_probe_ms;
/* How long a server waits for the first bytes of a probed connection before
 * deciding it is plain. */
extern int tp_accept_wait_ms;

/* Makes an existing (not yet started) session the psock's: hooks, aliases. */
void tp_session_attach_hooks(struct psock *ps, struct tether_session *s);
/* After EINTR: whether the interrupted call should be restarted (every
 * installed handler has SA_RESTART). */
bool tp_restart_after_eintr(void);
/* Waits for fd to poll `events`, up to timeout_ms (-1 = forever).  0 ready,
 * -EAGAIN timed out, -EINTR interrupted. */
int tp_wait(int fd, short events, int timeout_ms);
/* tp_wait on one of a session psock's numbers, which shutdown() of the
 * direction waited for (POLLIN: SHUT_RD, POLLOUT: SHUT_WR) also ends: 0 at
 * once once it has happened, before or during the wait (shutdown() wakes
 * the session's waiters), as does any change of the file behind the
 * number (app_waiter_wait). */
int tp_wait_shut(struct psock *ps, int fd, short events, int timeout_ms);
/* Whether a session's fd is its live socket (its readiness is the truth). */
bool live_session(const struct tether_session *s);
/* The readiness to report for a session's fd that poll or epoll found with
 * `revents` (poll bits), for the `events` the program asked for; 0 = not
 * ready after all.  Looks again when the fd is a placeholder, reported an
 * error or hang-up, or `suspect` is set (wait.c). */
short tp_session_revents(int fd, struct tether_session *s, short revents, short events,
                         bool suspect);

int pc_connect(struct psock *ps, int fd, const struct sockaddr *sa, socklen_t len);
/* Blocks (if the program's socket is blocking) until a connect in progress
 * ends.  0 when the psock is no longer connecting, -EAGAIN, or -EINTR. */
int pc_wait_connected(struct psock *ps, int fd, bool nonblock);

int pl_listen(struct psock *ps, int fd, int backlog);
/* listen() again on a listener: its new backlog. */
int pl_relisten(struct plisten *pl, int backlog);
int pl_accept(struct psock *ps, int fd, struct sockaddr *addr, socklen_t *alen, int flags);
/* The fork thread, for a forked child's accept() (fork.c): the connection
 * the program's accept() would take next.  1: plain (*plain, the caller's
 * to close); 2: a session (*sp, a new psock that holds it under tether's
 * own number, own_fd); -EAGAIN when none waits. */
int pl_take(struct plisten *pl, int *plain, struct psock **sp);
void pl_close(struct plisten *pl);
/* bind() met EADDRINUSE: closes the hidden sockets of closed listeners on
 * that port (kept for resumes).  True if there was one. */
bool pl_release_port(const struct sockaddr *sa);
/* The engine's handler for probe datagrams on a listener's UDP port. */
void pl_install_udp_handler(void *udp_chan);
/* The redial hook: announces the redial's source port to the server. */
void pl_redial_hook(struct tether_session *s, int fd);
/* Whether dst is one of this process's own listeners: a connection to
 * oneself stays plain (both ends would be one session in one context). */
bool pl_own_listener(const struct sockaddr *dst);
/* In a child after fork: the parent's listeners are not this process's. */
void pl_after_fork_child(void);
/* The listener's real socket (for getsockname & co). */
int pl_socket(struct plisten *pl);

#endif
