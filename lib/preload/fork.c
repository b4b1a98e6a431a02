/* Sessions shared with forked children: claims and relays.
 *
 * A session lives in the process that made it: its engine, its side channel
 * and its listener (where the peer redials) are there.  After fork(2) the
 * child's numbers of a session still name the parent's socket, which the
 * child must not touch.  So at fork the parent opens a channel to the child
 * (a SOCK_SEQPACKET socketpair) and counts the child as a holder of each of
 * its sessions (psock.kids).  On its first use of one (a data call, poll,
 * select, epoll_ctl, shutdown, or exec), the child claims it over the
 * channel; the parent's fork thread answers with one end of a new stream
 * socketpair, which the child puts under every number of the session (as
 * ps_swap does), and from then on relays bytes between the other end and
 * the session.  The child's numbers are then an ordinary stream socket:
 * blocking, non-blocking, poll, epoll and exec work on it natively, and
 * resumes stay invisible to the child (they happen in the parent).
 *
 * References.  Like a TCP socket shared by several processes, a session
 * ends (the close protocol, the peer's EOF) with its last reference: the
 * parent's numbers, children that may still claim it, and relays.  While
 * children hold it the parent keeps a number of its own (psock.own_fd) as
 * the session's app fd.  A child that closes its numbers without claiming
 * tells the parent (RELEASE); a child that exits closes the channel.
 *
 * Ends of the stream.  The child shutting down writing is the session's
 * shutdown; the child closing the relay drops a reference only.  A close
 * is announced on the channel before it happens (MSG_CLOSING: close(),
 * exit, _exit; MSG_EXEC covers whatever an exec'd program does), so a
 * relay whose end hangs up unannounced, with the channel gone too, was
 * held by a child that died: if it was the last holder, the session fails
 * (the peer gets an error) instead of closing.  The peer's
 * EOF reaches the child as EOF, announced first on the channel (NOTE_EOF)
 * and then by shutting down the relay; a session that fails is announced
 * with its error (NOTE_FAIL).  A child that reads EOF on a relay without
 * such a note (the parent died) gets ECONNRESET: never a false EOF.
 *
 * Listeners.  A child that inherited a listener accepts through the same
 * channel (pre-forked servers: nginx's workers): the parent's engine
 * accepts for every process, and a child's accept() asks the parent for the
 * next connection (MSG_ACCEPT).  A plain one is passed as it is; a session
 * gets a relay, as a claimed one does, and stays here with its resumes.
 * The child counts as a holder of the listener (psock.kids): it stays open
 * for new connections until the parent and every such child closed it.
 *
 * Threads.  The fork thread (parent) serves every channel and relay with
 * one poll loop; it runs as tether's own (tp_inside), with every signal
 * blocked.  f_lock guards the lists of children and relays; it is taken
 * after psock locks, never before one. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "preload.h"

#define RELAY_BUF 65536
/* How long a child waits for its parent's answer to a claim. */
#define CLAIM_WAIT_MS 5000
#define MAX_NOTES 1024

enum {
  MSG_CLAIM = 1, /* child: may I have session `serial`? */
  MSG_RELEASE,   /* child: closed it without claiming */
  MSG_CLOSING,   /* child: closes its relay of `serial` (or exits normally) */
  MSG_EXEC,      /* child: execs; its relays belong to the new program */
  MSG_GRANT,     /* parent: yes (with the relay's end) */
  MSG_REFUSE,    /* parent: no (err) */
  NOTE_EOF,      /* parent: the peer closed `serial` */
  NOTE_FAIL,     /* parent: `serial` failed (err) */
  MSG_ACCEPT,    /* child: the next connection of listener `serial` */
  MSG_ACCEPTED,  /* parent: here it is (a plain socket, or a relay's end) */
};

struct fmsg {
  uint32_t type;
  int32_t err; /* positive errno: REFUSE, NOTE_FAIL */
  uint64_t serial;
  /* MSG_ACCEPTED: the serial of the session relayed (0: the connection is
   * plain, passed as it is), and the TCP endpoints it stands for. */
  uint64_t relayed;
  uint32_t peer_len, local_len;
  struct sockaddr_storage peer, local;
};

/* A forked child (parent side). */
struct kid {
  struct kid *next;
  int chan;
  bool execd; /* said MSG_EXEC */
  struct psock **held; /* sessions it inherited and may still claim */
  int nheld, capheld;
  struct psock **lis; /* listeners it inherited: it accepts through us */
  int nlis, caplis;
};

/* One claimed session, relayed to one child (parent side). */
struct relay {
  struct relay *next;
  struct kid *kid; /* NULL once the child's channel is gone */
  struct psock *ps;
  struct tether_session *s;
  uint64_t serial;
  int fd; /* our end of the stream socketpair, non-blocking */
  size_t up_off, up_len;     /* child -> session */
  size_t down_off, down_len; /* session -> child */
  bool kid_eof;   /* read EOF from the child: it shut down writing, or closed */
  bool hup;       /* the child's end polls hung up: closed, or shut down both ways */
  bool closing;   /* the child announced its close (MSG_CLOSING) */
  bool execd;     /* the child exec'd (or let its channel go): its relays are
                   * held by programs that know nothing of tether */
  bool shut_sent; /* the child's shutdown passed on to the session */
  bool sess_eof;  /* the session has nothing more for the child */
  int sess_err;   /* ... because it failed (positive errno) */
  bool noted;     /* the child was told (NOTE_EOF / NOTE_FAIL) */
  bool rd_dead;   /* the child stopped reading: bytes for it are dropped */
  bool wr_dead;   /* the session takes no more bytes */
  int idle_wakes; /* wake-ups without progress in a row */
  int pidx;       /* the fork thread's poll slots (2), or -1 */
  uint8_t up[RELAY_BUF], down[RELAY_BUF];
};

static pthread_mutex_t f_lock = PTHREAD_MUTEX_INITIALIZER;
static struct kid *g_kids;
static struct relay *g_relays;
static int wake_fd = -1;
static bool thread_up;
static unsigned passes; /* the fork thread's loops (f_lock), for fork_at_exit */
static pthread_cond_t pass_cond = PTHREAD_COND_INITIALIZER;

/* Between fork_prepare and the parent's or child's handler. */
static struct kid *forking;
static int forking_child_end = -1;

/* Child side: the channel to the parent, and the notes it sent. */
static int parent_chan = -1;
static pthread_mutex_t claim_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
  uint64_t serial;
  int err;
} notes[MAX_NOTES];
static unsigned nnotes;

static void wake(void) {
  uint64_t one = 1;
  if (wake_fd >= 0)
    (void)!real.write(wake_fd, &one, sizeof(one));
}

static int send_full(int chan, const struct fmsg *m, int pass_fd) {
  struct iovec iov = {.iov_base = (void *)m, .iov_len = sizeof(*m)};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr h = {.msg_iov = &iov, .msg_iovlen = 1};
  if (pass_fd >= 0) {
    memset(&u, 0, sizeof(u));
    h.msg_control = u.buf;
    h.msg_controllen = sizeof(u.buf);
    struct cmsghdr *c = CMSG_FIRSTHDR(&h);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
  }
  ssize_t n;
  do
    n = real.sendmsg(chan, &h, MSG_NOSIGNAL | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  return n == (ssize_t)sizeof(*m) ? 0 : -1;
}

static int send_msg(int chan, uint32_t type, uint64_t serial, int err, int pass_fd) {
  struct fmsg m = {.type = type, .err = err, .serial = serial};
  return send_full(chan, &m, pass_fd);
}

/* One message; *fd gets a passed descriptor (or -1).  1, 0 at EOF, -1 with
 * errno (EAGAIN). */
static int recv_msg(int chan, struct fmsg *m, int *fd, int flags) {
  struct iovec iov = {.iov_base = m, .iov_len = sizeof(*m)};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } u;
  struct msghdr h = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                     .msg_controllen = sizeof(u.buf)};
  *fd = -1;
  ssize_t n;
  do
    n = real.recvmsg(chan, &h, flags | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n <= 0)
    return n < 0 ? -1 : 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(&h, c))
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
        c->cmsg_len == CMSG_LEN(sizeof(int)))
      memcpy(fd, CMSG_DATA(c), sizeof(int));
  if (n != (ssize_t)sizeof(*m) || (h.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
    if (*fd >= 0)
      real.close(*fd);
    *fd = -1;
    m->type = 0; /* not ours: ignored */
  }
  return 1;
}

/* ---- parent: references ---- */

/* A reference (a child's claim right, or a relay) is gone; the session ends
 * if it was the last: closed, or failed (the peer gets an error, not EOF)
 * when the last holder was a child that died without closing it. */
static void drop_ref(struct psock *ps, bool relay, bool crashed) {
  pthread_mutex_lock(&ps->lock);
  if (relay)
    ps->relays--;
  else
    ps->kids--;
  int own = ps->own_fd;
  bool last = !ps_shared(ps) && !ps_program_aliases(ps) && own >= 0 && ps->kind == PS_SESSION;
  struct tether_session *s = ps->s;
  pthread_mutex_unlock(&ps->lock);
  if (!last)
    return;
  if (crashed && s) {
    TP_ENTER();
    session_fail(s, TETHER_ESESSIONGONE);
    TP_LEAVE();
  }
  (void)tp_close_tracked(ps, own);
}

/* ---- parent: fork ---- */

/* Appends ps to a child's list; false without memory. */
static bool push(struct psock ***list, int *n, int *cap, struct psock *ps) {
  if (*n == *cap) {
    int c = *cap ? *cap * 2 : 8;
    struct psock **l = realloc(*list, (size_t)c * sizeof(*l));
    if (!l)
      return false;
    *list = l;
    *cap = c;
  }
  (*list)[(*n)++] = ps;
  return true;
}

static void hold(struct psock *ps, void *arg) {
  struct kid *k = arg;
  pthread_mutex_lock(&ps->lock);
  /* The child has the program's numbers of it (tether's own, if any, it
   * closes).  A listener stays open for new connections while a child
   * holds it, as a listening socket does. */
  if (ps->kind == PS_SESSION && ps->s && ps_program_aliases(ps) > 0) {
    if (push(&k->held, &k->nheld, &k->capheld, ps))
      ps->kids++;
  } else if (ps->kind == PS_LISTEN && ps->pl && ps_program_aliases(ps) > 0) {
    if (push(&k->lis, &k->nlis, &k->caplis, ps))
      ps->kids++;
  }
  pthread_mutex_unlock(&ps->lock);
}

static void kid_free(struct kid *k) {
  for (int i = 0; i < k->nheld; i++)
    drop_ref(k->held[i], false, false);
  for (int i = 0; i < k->nlis; i++)
    ps_listener_unref(k->lis[i]);
  if (k->chan >= 0)
    real.close(k->chan);
  free(k->held);
  free(k->lis);
  free(k);
}

void fork_prepare(void) {
  if (tp_disabled || tp_inside)
    return;
  struct kid *k = calloc(1, sizeof(*k));
  if (!k)
    return;
  k->chan = -1;
  TP_ENTER();
  fdt_each(hold, k);
  int sv[2];
  if ((k->nheld || k->nlis) && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0) {
    k->chan = sv[0];
    forking_child_end = sv[1];
    forking = k;
  } else {
    kid_free(k); /* no sessions, or no channel: children get EBADF */
  }
  TP_LEAVE();
}

void fork_lock_relays(void) { pthread_mutex_lock(&f_lock); }
void fork_unlock_relays(void) { pthread_mutex_unlock(&f_lock); }

static void *fork_thread(void *arg);

/* f_lock held: the fork thread runs (started if need be). */
static bool thread_start(void) {
  bool ok = thread_up;
  if (!ok && (wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) >= 0) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old); /* the thread takes no signal */
    pthread_t th;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    ok = real.pthread_create(&th, &at, fork_thread, NULL) == 0;
    pthread_attr_destroy(&at);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!ok) {
      real.close(wake_fd);
      wake_fd = -1;
    }
    thread_up = ok;
  }
  return ok;
}

void fork_parent(void) {
  struct kid *k = forking;
  forking = NULL;
  if (!k)
    return;
  TP_ENTER();
  real.close(forking_child_end); /* so a child that goes away is seen */
  forking_child_end = -1;
  pthread_mutex_lock(&f_lock);
  bool ok = thread_start();
  if (ok) {
    k->next = g_kids;
    g_kids = k;
  }
  pthread_mutex_unlock(&f_lock);
  if (ok)
    wake();
  else
    kid_free(k);
  TP_LEAVE();
}

/* ---- child: fork ---- */

void fork_child(void) {
  pthread_cond_init(&pass_cond, NULL);
  pthread_mutex_init(&claim_lock, NULL);
  /* The parent's children, relays and thread are not ours. */
  for (struct kid *k = g_kids, *next; k; k = next) {
    next = k->next;
    if (k->chan >= 0)
      real.close(k->chan);
    free(k->held);
    free(k->lis);
    free(k);
  }
  for (struct relay *r = g_relays, *next; r; r = next) {
    next = r->next;
    real.close(r->fd);
    free(r);
  }
  g_kids = NULL;
  g_relays = NULL;
  if (wake_fd >= 0)
    real.close(wake_fd);
  wake_fd = -1;
  thread_up = false;
  if (parent_chan >= 0) /* a grandparent's sessions are not claimable here */
    real.close(parent_chan);
  parent_chan = -1;
  nnotes = 0;
  if (forking) {
    real.close(forking->chan);
    free(forking->held);
    free(forking->lis);
    free(forking);
    forking = NULL;
    parent_chan = forking_child_end;
    forking_child_end = -1;
  }
}

/* ---- child: claims ---- */

static void warn_unclaimable(struct psock *ps, const char *why) {
  static bool said;
  if (__atomic_exchange_n(&said, true, __ATOMIC_RELAXED))
    return;
  char msg[256];
  snprintf(msg, sizeof(msg), "fd %d is a session inherited through fork that cannot be used "
           "here (%s): EBADF (tether-run(1), FORK AND EXEC)", ps->naliases ? ps->aliases[0] : -1,
           why);
  tp_warn(msg);
}

static void keep_note(const struct fmsg *m) {
  if (m->type != NOTE_EOF && m->type != NOTE_FAIL)
    return;
  unsigned i = nnotes < MAX_NOTES ? nnotes++ : (unsigned)(m->serial % MAX_NOTES);
  notes[i].serial = m->serial;
  notes[i].err = m->type == NOTE_FAIL ? (m->err > 0 ? m->err : ECONNRESET) : 0;
}

/* claim_lock held.  Waits for the answer about serial (a GRANT, ACCEPTED
 * or REFUSE: *m, and *fd the descriptor passed with it or -1), keeping
 * notes that come first.  0, or -1 with no answer. */
static int await_answer(uint64_t serial, struct fmsg *m, int *fd) {
  uint64_t deadline = tp_now_ms() + CLAIM_WAIT_MS;
  for (;;) {
    int got;
    int rc = recv_msg(parent_chan, m, &got, MSG_DONTWAIT);
    if (rc == 0) {
      m->type = 0;
      return -1;
    }
    if (rc > 0) {
      if ((m->type == MSG_GRANT || m->type == MSG_ACCEPTED || m->type == MSG_REFUSE) &&
          m->serial == serial) {
        *fd = got;
        if (m->type == MSG_REFUSE && m->err <= 0)
          m->err = EBADF;
        return 0;
      }
      if (got >= 0)
        real.close(got);
      keep_note(m);
      continue;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      m->type = 0;
      return -1;
    }
    uint64_t now = tp_now_ms();
    if (now >= deadline) {
      m->type = 0;
      return -1;
    }
    struct pollfd p = {.fd = parent_chan, .events = POLLIN};
    (void)real.poll(&p, 1, (int)(deadline - now)); /* EINTR: look again */
  }
}

int fork_claim(struct psock *ps) {
  if (!ps_orphan_session(ps))
    return ps->kind == PS_ORPHAN ? (warn_unclaimable(ps, "a listener"), -EBADF) : 0;
  TP_ENTER();
  int rc = 0;
  pthread_mutex_lock(&claim_lock);
  if (!ps_orphan_session(ps)) /* another thread claimed it meanwhile */
    goto out;
  int fd = -1;
  if (!ps->serial || parent_chan < 0 ||
      send_msg(parent_chan, MSG_CLAIM, ps->serial, 0, -1) < 0) {
    warn_unclaimable(ps, !ps->serial       ? "it was refused before"
                         : parent_chan < 0 ? "its owner is not the parent process"
                                           : "the parent has gone");
    rc = -EBADF;
    goto out;
  }
  struct fmsg m;
  if (await_answer(ps->serial, &m, &fd) < 0 || m.type != MSG_GRANT || fd < 0) {
    if (fd >= 0)
      real.close(fd);
    warn_unclaimable(ps, m.type == MSG_REFUSE ? strerror(m.err) : "the parent does not answer");
    ps->serial = 0; /* not asked again: every later call fails at once */
    rc = -EBADF;
    goto out;
  }
  pthread_mutex_lock(&ps->lock);
  if (ps->nonblock)
    (void)real.fcntl(fd, F_SETFL, real.fcntl(fd, F_GETFL) | O_NONBLOCK);
  for (int i = 0; i < ps->nopts; i++) /* SO_RCVTIMEO & co. apply to the relay */
    if (ps->opts[i].level == SOL_SOCKET)
      (void)real.setsockopt(fd, SOL_SOCKET, ps->opts[i].name, ps->opts[i].val, ps->opts[i].len);
  bool ok = true;
  for (int i = 0; i < ps->naliases; i++)
    if (real.dup3(fd, ps->aliases[i], ps->alias_cloexec[i] ? O_CLOEXEC : 0) < 0)
      ok = false;
  ps->kind = ok ? PS_RELAY : PS_PLAIN; /* a number that could not follow: not ours anymore */
  pthread_mutex_unlock(&ps->lock);
  real.close(fd);
  if (!ok) {
    tp_warn("a session inherited through fork could not be put under all its numbers");
    rc = -EBADF;
  }
out:
  pthread_mutex_unlock(&claim_lock);
  TP_LEAVE();
  return rc;
}

/* A connection the parent passed for the program's accept(): a plain
 * socket as it is, or a relay's end, tracked as a relay of session
 * m->relayed that answers for the TCP endpoints.  The descriptor, or a
 * negative errno. */
static int accepted(const struct fmsg *m, int c, struct sockaddr *addr, socklen_t *alen,
                    int flags) {
  (void)real.fcntl(c, F_SETFL, (flags & SOCK_NONBLOCK) ? O_NONBLOCK : 0);
  if (!(flags & SOCK_CLOEXEC)) /* (passed close-on-exec) */
    (void)real.fcntl(c, F_SETFD, 0);
  if (m->relayed) {
    struct psock *ps = tp_track_new(c, PS_RELAY, m->local.ss_family,
                                    (flags & SOCK_NONBLOCK) != 0, (flags & SOCK_CLOEXEC) != 0);
    if (!ps) {
      real.close(c); /* the parent sees a close: the session ends */
      return -ENOMEM;
    }
    pthread_mutex_lock(&ps->lock);
    ps->serial = m->relayed;
    ps->peer_len = m->peer_len <= sizeof(ps->peer) ? m->peer_len : 0;
    ps->local_len = m->local_len <= sizeof(ps->local) ? m->local_len : 0;
    memcpy(&ps->peer, &m->peer, ps->peer_len);
    memcpy(&ps->local, &m->local, ps->local_len);
    pthread_mutex_unlock(&ps->lock);
  }
  if (addr && alen) {
    socklen_t n = m->peer_len <= sizeof(m->peer) ? m->peer_len : 0;
    memcpy(addr, &m->peer, *alen < n ? *alen : n);
    *alen = n;
  }
  return c;
}

int fork_accept(struct psock *lps, int fd, struct sockaddr *addr, socklen_t *alen, int flags) {
  if (parent_chan < 0 || !lps->serial)
    return -ENOTCONN;
  for (;;) {
    struct fmsg m;
    int c = -1, rc;
    TP_ENTER();
    pthread_mutex_lock(&claim_lock);
    if (parent_chan < 0 || send_msg(parent_chan, MSG_ACCEPT, lps->serial, 0, -1) < 0)
      rc = -ENOTCONN;
    else
      rc = await_answer(lps->serial, &m, &c) < 0 ? -ENOTCONN : 0;
    pthread_mutex_unlock(&claim_lock);
    TP_LEAVE();
    if (rc < 0)
      return rc;
    if (m.type == MSG_ACCEPTED && c >= 0)
      return accepted(&m, c, addr, alen, flags);
    if (c >= 0)
      real.close(c);
    if (m.type == MSG_REFUSE && m.err == ENOTCONN) {
      /* Not the parent's listener (a grandchild's): accept by ourselves. */
      pthread_mutex_lock(&lps->lock);
      lps->serial = 0;
      pthread_mutex_unlock(&lps->lock);
      return -ENOTCONN;
    }
    if (m.type != MSG_REFUSE || m.err != EAGAIN)
      return m.type == MSG_REFUSE ? -m.err : -ECONNABORTED;
    bool nonblock;
    pthread_mutex_lock(&lps->lock);
    nonblock = lps->nonblock;
    pthread_mutex_unlock(&lps->lock);
    if (nonblock)
      return -EAGAIN;
    /* The program's number polls readable when the parent has one. */
    if (tp_wait(fd, POLLIN, -1) == -EINTR && !tp_restart_after_eintr())
      return -EINTR;
  }
}

void fork_release(struct psock *ps) {
  if (parent_chan < 0)
    return;
  pthread_mutex_lock(&claim_lock);
  (void)send_msg(parent_chan, MSG_RELEASE, ps->serial, 0, -1);
  pthread_mutex_unlock(&claim_lock);
}

int fork_relay_eof(struct psock *ps) {
  /* A relay this process inherited from its own parent (serial 0) has
   * nobody to ask: its EOF is taken as it is. */
  if (!ps->serial)
    return 0;
  int rc = -ECONNRESET; /* no word from the parent: it died */
  pthread_mutex_lock(&claim_lock);
  for (;;) {
    struct fmsg m;
    int got;
    if (parent_chan < 0 || recv_msg(parent_chan, &m, &got, MSG_DONTWAIT) <= 0)
      break;
    if (got >= 0)
      real.close(got);
    keep_note(&m);
  }
  for (unsigned i = 0; i < nnotes; i++)
    if (notes[i].serial == ps->serial) {
      rc = -notes[i].err;
      break;
    }
  pthread_mutex_unlock(&claim_lock);
  return rc;
}

void fork_closing(struct psock *ps) {
  if (parent_chan < 0 || !ps->serial)
    return;
  pthread_mutex_lock(&claim_lock);
  (void)send_msg(parent_chan, MSG_CLOSING, ps->serial, 0, -1);
  /* Its note, if any, is read no more: room for those of open relays (a
   * pre-forked worker serves connection after connection). */
  for (unsigned i = 0; i < nnotes; i++)
    if (notes[i].serial == ps->serial)
      notes[i--] = notes[--nnotes];
  pthread_mutex_unlock(&claim_lock);
}

static void closing_at_exit(struct psock *ps, void *arg) {
  (void)arg;
  if (ps->kind == PS_RELAY && ps->serial)
    (void)send_msg(parent_chan, MSG_CLOSING, ps->serial, 0, -1);
}

/* f_lock held: a relay whose far end hung up (its child closed it, or
 * exited: the relay thread may not have heard of that on the channel yet)
 * is still to end: it may hold what that child wrote last. */
static bool relays_ending(void) {
  for (struct relay *r = g_relays; r; r = r->next)
    if (r->hup)
      return true;
  return false;
}

void fork_at_exit(unsigned linger_s) {
  if (tp_inside)
    return;
  if (parent_chan >= 0)
    fdt_each(closing_at_exit, NULL); /* exit closes them, as close() would */
  /* A parent: relays whose children are gone (a parent often exits right
   * after reaping them) are ended first, so that their sessions are closed
   * with the others rather than dropped.  What such a child wrote last may
   * still be in its relay, for a session that takes it only once resumed
   * (a lost connection): as closed sessions are (ctx_linger), these are
   * waited for up to TETHER_LINGER_S.  Relays of children that live on
   * are not: their sessions die with this process. */
  pthread_mutex_lock(&f_lock);
  if (thread_up && g_relays) {
    unsigned first = passes + 2; /* a pass that began before the call may miss them */
    uint64_t end = tp_now_ms() + (linger_s ? (uint64_t)linger_s * 1000 : 500);
    while (tp_now_ms() < end) {
      /* Two full passes after the last look that found one: a relay
       * leaves the list before its session is let go (drop_ref), and
       * tp_fini must not close that session too. */
      if (relays_ending())
        first = passes + 2;
      else if (passes >= first)
        break;
      wake(); /* a pass now: the thread may sleep with nothing to do */
      struct timespec until;
      clock_gettime(CLOCK_REALTIME, &until);
      until.tv_nsec += 50 * 1000000L; /* looked at again at least this often */
      if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
      }
      (void)pthread_cond_timedwait(&pass_cond, &f_lock, &until);
    }
  }
  pthread_mutex_unlock(&f_lock);
}

static void fork_before_exec_claims(bool exec);

void fork_chan_closing(unsigned first, unsigned last) {
  if (tp_inside || parent_chan < 0 || (unsigned)parent_chan < first ||
      (unsigned)parent_chan > last || tp_vforked())
    return;
  /* The channel is about to go (closefrom before exec, say): what a new
   * program would be handed is claimed now, and the channel closed by us. */
  fork_before_exec_claims(false);
  pthread_mutex_lock(&claim_lock);
  /* Our relays' ends closing later cannot be announced any more: the
   * parent is to take them as closes. */
  (void)send_msg(parent_chan, MSG_EXEC, 0, 0, -1);
  real.close(parent_chan);
  parent_chan = -1;
  pthread_mutex_unlock(&claim_lock);
}

/* _exit and _Exit end the process without destructors (forked children
 * often leave that way): the relays still open are closed by it, not
 * crashed.  Async-signal-safe: no lock is waited for (if the table is busy,
 * nothing is said, and a relay that was the session's last holder fails
 * it rather than risk a false EOF). */
EXPORT void _exit(int status) {
  real_init();
  if (parent_chan >= 0 && !tp_inside && !tp_vforked())
    (void)fdt_try_each(closing_at_exit, NULL);
  real._exit(status);
}

EXPORT void _Exit(int status) {
  real_init();
  if (parent_chan >= 0 && !tp_inside && !tp_vforked())
    (void)fdt_try_each(closing_at_exit, NULL);
  real._Exit(status);
}

/* ---- child: exec ---- */

/* Which orphans are handed to a new program: those on standard input,
 * output or error (inetd style: dup2 onto 0 and 1, then exec).  A session
 * merely inherited by a helper under another number is not: its relay would
 * take bytes the parent is waiting for, which a TCP socket the helper never
 * reads does not do. */
struct pending {
  struct psock *ps[3];
  int n;
  bool exec; /* ... and only numbers that survive exec */
};

static void claimable(struct psock *ps, void *arg) {
  struct pending *p = arg;
  pthread_mutex_lock(&ps->lock);
  if (ps_orphan_session(ps) && p->n < (int)(sizeof(p->ps) / sizeof(p->ps[0])))
    for (int i = 0; i < ps->naliases; i++)
      if (ps->aliases[i] <= 2 && (!p->exec || !ps->alias_cloexec[i])) {
        p->ps[p->n++] = ps;
        break;
      }
  pthread_mutex_unlock(&ps->lock);
}

static void fork_before_exec_claims(bool exec) {
  struct pending p = {.n = 0, .exec = exec};
  fdt_each(claimable, &p);
  for (int i = 0; i < p.n; i++)
    (void)fork_claim(p.ps[i]); /* unclaimed, its numbers close at exec */
}

void fork_before_exec(void) {
  if (tp_disabled || tp_inside || parent_chan < 0 || tp_vforked())
    return;
  fork_before_exec_claims(true);
  /* Whatever the new program does with its relays, it knows nothing of
   * tether: their ends closing are closes.  (An exec that fails leaves
   * this said: a later crash of this child then looks like a close.) */
  pthread_mutex_lock(&claim_lock);
  (void)send_msg(parent_chan, MSG_EXEC, 0, 0, -1);
  pthread_mutex_unlock(&claim_lock);
}

/* ---- what a new program learns of its relays ---- */

/* The relays a new program gets on descriptors 0 to 2 are stream sockets of
 * another family; so that it still sees the TCP connection they stand for
 * (getpeername: sshd re-executes itself, logs the client's address and
 * checks authorized_keys' from= against it), each is described in the
 * environment as "FD:INODE:PEER:LOCAL;" (the addresses' bytes in hex), and
 * the new program's preload takes the description for a descriptor that is
 * still that socket (relays_adopt).  The variable is set afresh at every
 * exec, and removed when there is nothing to describe. */
#define RELAYS_VAR "TETHER_RELAYS"
#define RELAYS_MAX 512

static void hex(char **p, const char *end, const void *data, socklen_t len) {
  const uint8_t *b = data;
  for (socklen_t i = 0; i < len && *p + 2 < end; i++)
    *p += snprintf(*p, (size_t)(end - *p), "%02x", b[i]);
}

struct text {
  char *p, *end;
};

static void describe(struct psock *ps, void *arg) {
  struct text *t = arg;
  char **p = &t->p, *end = t->end;
  pthread_mutex_lock(&ps->lock);
  for (int i = 0; ps->kind == PS_RELAY && i < ps->naliases; i++) {
    int fd = ps->aliases[i];
    struct stat st;
    if (fd > 2 || ps->alias_cloexec[i] || fstat(fd, &st) < 0 || !ps->peer_len || !ps->local_len ||
        ps->peer_len > 28 || ps->local_len > 28 || end - *p < 160)
      continue;
    *p += snprintf(*p, (size_t)(end - *p), "%d:%llu:", fd, (unsigned long long)st.st_ino);
    hex(p, end, &ps->peer, ps->peer_len);
    *p += snprintf(*p, (size_t)(end - *p), ":");
    hex(p, end, &ps->local, ps->local_len);
    *p += snprintf(*p, (size_t)(end - *p), ";");
  }
  pthread_mutex_unlock(&ps->lock);
}

/* The variable's "NAME=VALUE" for this exec, in buf; false if none. */
static bool relays_var(char *buf, size_t len) {
  if (tp_disabled || tp_vforked() || len < RELAYS_MAX)
    return false;
  TP_ENTER();
  struct text t = {.p = buf + snprintf(buf, len, RELAYS_VAR "="), .end = buf + len};
  char *start = t.p;
  fdt_each(describe, &t);
  TP_LEAVE();
  return t.p != start;
}

/* envp with the variable as it must be for this exec, or envp itself when
 * it needs no change (the result is freed by the caller if not envp). */
static char *const *relays_env(char *const envp[], char *buf, size_t len) {
  bool have = relays_var(buf, len);
  size_t n = 0, stale = 0;
  for (; envp && envp[n]; n++)
    stale += strncmp(envp[n], RELAYS_VAR "=", sizeof(RELAYS_VAR)) == 0;
  if (!have && !stale)
    return envp;
  char **out = malloc((n + 2) * sizeof(*out));
  if (!out)
    return envp;
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (strncmp(envp[i], RELAYS_VAR "=", sizeof(RELAYS_VAR)) != 0)
      out[k++] = envp[i];
  if (have)
    out[k++] = buf;
  out[k] = NULL;
  return out;
}

void relays_adopt(void) {
  const char *v = getenv(RELAYS_VAR);
  if (!v)
    return;
  char copy[RELAYS_MAX];
  snprintf(copy, sizeof(copy), "%s", v);
  unsetenv(RELAYS_VAR); /* ours: the next exec says it again if it holds */
  for (char *save = NULL, *it = strtok_r(copy, ";", &save); it; it = strtok_r(NULL, ";", &save)) {
    int fd;
    unsigned long long ino;
    char peer[64], local[64];
    struct stat st;
    if (sscanf(it, "%d:%llu:%63[0-9a-f]:%63[0-9a-f]", &fd, &ino, peer, local) != 4 || fd < 0 ||
        fd > 2 || fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode) || st.st_ino != ino)
      continue; /* not that socket any more */
    struct sockaddr_storage a[2];
    socklen_t alen[2] = {0, 0};
    const char *hx[2] = {peer, local};
    for (int k = 0; k < 2; k++) {
      memset(&a[k], 0, sizeof(a[k]));
      for (const char *h = hx[k]; h[0] && h[1] && alen[k] < sizeof(a[k]); h += 2) {
        unsigned b;
        if (sscanf(h, "%2x", &b) != 1)
          break;
        ((uint8_t *)&a[k])[alen[k]++] = (uint8_t)b;
      }
    }
    int fl = real.fcntl(fd, F_GETFL), fdfl = real.fcntl(fd, F_GETFD);
    struct psock *ps = alen[0] && alen[1] ? tp_track_new(fd, PS_RELAY, a[1].ss_family,
                                                         fl >= 0 && (fl & O_NONBLOCK),
                                                         fdfl >= 0 && (fdfl & FD_CLOEXEC))
                                          : NULL;
    if (!ps)
      continue;
    pthread_mutex_lock(&ps->lock);
    ps->serial = 0; /* nobody to ask about its end: an EOF is the peer's */
    ps->peer = a[0];
    ps->peer_len = alen[0];
    ps->local = a[1];
    ps->local_len = alen[1];
    pthread_mutex_unlock(&ps->lock);
  }
}

EXPORT int execve(const char *path, char *const argv[], char *const envp[]) {
  real_init();
  fork_before_exec();
  char buf[RELAYS_MAX];
  char *const *env = relays_env(envp, buf, sizeof(buf));
  int rc = real.execve(path, argv, env);
  if (env != envp)
    free((void *)env);
  return rc;
}

/* The calls that pass the process's environment. */
static void relays_setenv(void) {
  char buf[RELAYS_MAX];
  if (relays_var(buf, sizeof(buf)))
    (void)setenv(RELAYS_VAR, buf + sizeof(RELAYS_VAR), 1);
  else
    (void)unsetenv(RELAYS_VAR);
}

EXPORT int execv(const char *path, char *const argv[]) {
  real_init();
  fork_before_exec();
  relays_setenv();
  return real.execv(path, argv);
}

EXPORT int execvp(const char *file, char *const argv[]) {
  real_init();
  fork_before_exec();
  relays_setenv();
  return real.execvp(file, argv);
}

EXPORT int execvpe(const char *file, char *const argv[], char *const envp[]) {
  real_init();
  fork_before_exec();
  char buf[RELAYS_MAX];
  char *const *env = relays_env(envp, buf, sizeof(buf));
  int rc = real.execvpe(file, argv, env);
  if (env != envp)
    free((void *)env);
  return rc;
}

EXPORT int fexecve(int fd, char *const argv[], char *const envp[]) {
  real_init();
  fork_before_exec();
  char buf[RELAYS_MAX];
  char *const *env = relays_env(envp, buf, sizeof(buf));
  int rc = real.fexecve(fd, argv, env);
  if (env != envp)
    free((void *)env);
  return rc;
}

/* execl, execlp, execle: the list as a vector, then the vector call. */
enum { EXEC_V, EXEC_VP, EXEC_VE };

static int exec_list(int how, const char *path, const char *arg, va_list ap) {
  va_list count;
  va_copy(count, ap);
  size_t n = 1;
  while (va_arg(count, char *))
    n++;
  va_end(count);
  char *small[64];
  char **argv = n < 64 ? small : malloc((n + 1) * sizeof(*argv));
  if (!argv) {
    errno = ENOMEM;
    return -1;
  }
  argv[0] = (char *)arg;
  for (size_t i = 1; i <= n; i++)
    argv[i] = va_arg(ap, char *); /* argv[n]: the terminating NULL */
  int rc;
  if (how == EXEC_VE) {
    char **envp = va_arg(ap, char **);
    rc = execve(path, argv, envp);
  } else {
    rc = how == EXEC_VP ? execvp(path, argv) : execv(path, argv);
  }
  int saved = errno;
  if (argv != small)
    free(argv);
  errno = saved;
  return rc;
}

EXPORT int execl(const char *path, const char *arg, ...) {
  va_list ap;
  va_start(ap, arg);
  int rc = exec_list(EXEC_V, path, arg, ap);
  va_end(ap);
  return rc;
}

EXPORT int execlp(const char *file, const char *arg, ...) {
  va_list ap;
  va_start(ap, arg);
  int rc = exec_list(EXEC_VP, file, arg, ap);
  va_end(ap);
  return rc;
}

EXPORT int execle(const char *path, const char *arg, ...) {
  va_list ap;
  va_start(ap, arg);
  int rc = exec_list(EXEC_VE, path, arg, ap);
  va_end(ap);
  return rc;
}

/* ---- parent: the fork thread ---- */

static void relay_note(struct relay *r) {
  if (r->noted)
    return;
  r->noted = true;
  if (r->kid)
    (void)send_msg(r->kid->chan, r->sess_err ? NOTE_FAIL : NOTE_EOF, r->serial, r->sess_err, -1);
}

/* As io.c reports a failed session. */
static int session_errno(ssize_t rc) {
  if (rc == TETHER_EGIVEUP)
    return ETIMEDOUT;
  return rc < 0 && rc > -4096 ? (int)-rc : ECONNRESET;
}

static bool serve_kid(struct kid *k);

/* The child's end is closed for good: it hung up, and the child said it
 * closes, or its channel is gone (exited, exec'd, or let it go).  A hang-up
 * alone may be a shutdown both ways by a child that still holds it. */
static bool relay_gone(const struct relay *r) { return r->hup && (r->closing || !r->kid); }

/* The child's end read EOF or hung up: a close is announced on the channel
 * before it happens, so what the channel holds is read first. */
static void hear_kid(struct relay *r) {
  if (r->kid && !r->closing)
    (void)serve_kid(r->kid); /* its end of file is seen by the main loop */
}

/* Moves what can be moved without waiting.  Returns whether anything
 * happened; *done when the relay is finished. */
static bool pump(struct relay *r, bool *done) {
  bool moved = false, progress;
  do {
    progress = false;
    /* child -> session */
    if (!r->up_len && !r->kid_eof) {
      ssize_t n = real.read(r->fd, r->up, sizeof(r->up));
      if (n > 0) {
        r->up_off = 0;
        r->up_len = (size_t)n;
        progress = true;
      } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        r->kid_eof = true;
        hear_kid(r);
        progress = true;
      }
    }
    if (!r->hup) {
      /* A child that closed its end takes nothing more: the session's bytes
       * stay in the session (for the parent, or another child). */
      struct pollfd p = {.fd = r->fd, .events = 0};
      if (real.poll(&p, 1, 0) == 1 && (p.revents & POLLHUP)) {
        r->hup = true;
        hear_kid(r);
        progress = true;
      }
    }
    if (r->up_len) {
      ssize_t w = r->wr_dead ? -EPIPE : tether_write(r->s, r->up + r->up_off, r->up_len);
      if (w > 0) {
        r->up_off += (size_t)w;
        r->up_len -= (size_t)w;
        progress = true;
      } else if (w != -EAGAIN && w != 0) {
        /* The session takes nothing more: the child's writes fail. */
        r->up_len = 0;
        if (!r->wr_dead)
          (void)real.shutdown(r->fd, SHUT_RD);
        r->wr_dead = true;
        progress = true;
      }
    }
    /* EOF without a hang-up: the child shut down writing (a close, or a
     * death, hangs up at once), and so does the session. */
    if (r->kid_eof && !r->up_len && !r->hup && !r->closing && !r->shut_sent) {
      r->shut_sent = true;
      (void)tether_shutdown(r->s);
      progress = true;
    }
    /* session -> child */
    if (!r->down_len && !r->sess_eof && !r->hup && !r->closing && !r->rd_dead) {
      ssize_t n = tether_read(r->s, r->down, sizeof(r->down));
      if (n > 0) {
        r->down_off = 0;
        r->down_len = (size_t)n;
        progress = true;
      } else if (n == 0) {
        r->sess_eof = true;
        progress = true;
      } else if (n != -EAGAIN) {
        r->sess_eof = true;
        r->sess_err = session_errno(n);
        LOG_DEBUG(r->s->ctx, "relay %llu: the session's read failed: %s",
                  (unsigned long long)r->serial, tether_strerror((int)n));
        progress = true;
      }
    }
    if (r->down_len) {
      ssize_t w = real.send(r->fd, r->down + r->down_off, r->down_len, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (w > 0) {
        r->down_off += (size_t)w;
        r->down_len -= (size_t)w;
        progress = true;
      } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        r->down_len = 0; /* the child stopped reading (or went away) */
        r->rd_dead = true;
        progress = true;
      }
    }
    if (r->sess_eof && !r->down_len && !r->noted) {
      relay_note(r); /* first the word, then the end of the stream */
      (void)real.shutdown(r->fd, r->sess_err ? SHUT_RDWR : SHUT_WR);
      progress = true;
    }
    moved |= progress;
  } while (progress);
  /* Finished: the child closed and everything it wrote is in; or nothing can
   * flow either way any more. */
  *done = (relay_gone(r) && r->kid_eof && !r->up_len) ||
          (r->kid_eof && !r->up_len && r->noted) || (r->sess_err && r->noted);
  return moved;
}

static void relay_end(struct relay *r) {
  pthread_mutex_lock(&f_lock);
  for (struct relay **pp = &g_relays; *pp; pp = &(*pp)->next)
    if (*pp == r) {
      *pp = r->next;
      break;
    }
  pthread_mutex_unlock(&f_lock);
  if (r->kid && r->kid->execd)
    r->execd = true;
  /* Closed by the child (or at its exit), or by a program it exec'd: the
   * reference goes.  Else the child died holding it. */
  bool crashed = relay_gone(r) && !r->closing && !r->execd;
  real.close(r->fd);
  struct psock *ps = r->ps;
  free(r);
  drop_ref(ps, true, crashed);
}

/* A relay of ps's session, not yet listed; *far gets the other end.  NULL
 * with *err, a positive errno. */
static struct relay *relay_make(struct psock *ps, int *far, int *err) {
  struct relay *r = calloc(1, sizeof(*r));
  int sv[2] = {-1, -1};
  pthread_mutex_lock(&ps->lock);
  struct tether_session *s = ps->kind == PS_SESSION ? ps->s : NULL;
  pthread_mutex_unlock(&ps->lock);
  if (!r || !s || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    *err = !r ? ENOMEM : !s ? EBADF : errno;
    free(r);
    return NULL;
  }
  (void)real.fcntl(sv[0], F_SETFL, O_NONBLOCK);
  r->pidx = -1;
  r->ps = ps;
  r->s = s;
  r->serial = ps->serial;
  r->fd = sv[0];
  pthread_mutex_lock(&ps->lock);
  ps->relays++;
  pthread_mutex_unlock(&ps->lock);
  *far = sv[1];
  return r;
}

static void relay_list(struct relay *r) {
  pthread_mutex_lock(&f_lock);
  r->next = g_relays;
  g_relays = r;
  pthread_mutex_unlock(&f_lock);
}

/* A relay of ps's session to k, which gets the other end in m (sent
 * here).  0, or a positive errno (nothing sent). */
static int relay_new(struct kid *k, struct psock *ps, const struct fmsg *m) {
  int far, err;
  struct relay *r = relay_make(ps, &far, &err);
  if (!r)
    return err;
  r->kid = k;
  if (send_full(k->chan, m, far) < 0)
    r->kid = NULL; /* the child is gone: the relay sees its end close */
  real.close(far);
  relay_list(r);
  return 0;
}

int fork_spawn_relay(struct psock *ps) {
  TP_ENTER();
  pthread_mutex_lock(&f_lock);
  bool up = thread_start();
  pthread_mutex_unlock(&f_lock);
  int far = -1, err = EAGAIN;
  struct relay *r = up ? relay_make(ps, &far, &err) : NULL;
  if (r) {
    /* Held by a program that knows nothing of tether: its end closing is
     * a close. */
    r->execd = true;
    relay_list(r);
    wake();
  }
  TP_LEAVE();
  return r ? far : -err;
}

/* A claim from k. */
static void grant(struct kid *k, uint64_t serial) {
  int i;
  for (i = 0; i < k->nheld; i++)
    if (k->held[i]->serial == serial)
      break;
  struct fmsg m = {.type = MSG_GRANT, .serial = serial};
  int err = i == k->nheld ? EBADF : relay_new(k, k->held[i], &m);
  if (err) {
    (void)send_msg(k->chan, MSG_REFUSE, serial, err, -1);
    return;
  }
  struct psock *ps = k->held[i];
  pthread_mutex_lock(&ps->lock);
  ps->kids--; /* the claim right became a relay */
  pthread_mutex_unlock(&ps->lock);
  k->held[i] = k->held[--k->nheld];
}

/* An accept() of k's on a listener it inherited: the next connection the
 * program's own accept() would take, passed as it is when plain, relayed
 * when a session (which stays here, where its peer resumes it).  EAGAIN
 * when none waits. */
static void accept_for(struct kid *k, uint64_t serial) {
  struct psock *lps = NULL;
  for (int i = 0; i < k->nlis && !lps; i++)
    if (k->lis[i]->serial == serial)
      lps = k->lis[i];
  int plain = -1;
  struct psock *ps = NULL;
  int rc = lps ? pl_take(lps->pl, &plain, &ps) : -ENOTCONN;
  struct fmsg m = {.type = MSG_ACCEPTED, .serial = serial};
  if (rc == 1) {
    socklen_t len = sizeof(m.peer);
    if (real.getpeername(plain, (struct sockaddr *)&m.peer, &len) == 0)
      m.peer_len = len;
    len = sizeof(m.local);
    if (real.getsockname(plain, (struct sockaddr *)&m.local, &len) == 0)
      m.local_len = len;
    if (send_full(k->chan, &m, plain) < 0)
      (void)real.shutdown(plain, SHUT_RDWR); /* the child is gone: as a reset port */
    real.close(plain);
    return;
  }
  if (rc == 2) {
    pthread_mutex_lock(&ps->lock);
    m.relayed = ps->serial;
    m.peer = ps->peer;
    m.peer_len = ps->peer_len;
    m.local = ps->local;
    m.local_len = ps->local_len;
    int own = ps->own_fd;
    pthread_mutex_unlock(&ps->lock);
    int err = relay_new(k, ps, &m);
    if (!err)
      return;
    (void)tp_close_tracked(ps, own); /* no relay: the session ends */
    rc = -err;
  }
  (void)send_msg(k->chan, MSG_REFUSE, serial, -rc, -1);
}

static void release(struct kid *k, uint64_t serial) {
  for (int i = 0; i < k->nheld; i++)
    if (k->held[i]->serial == serial) {
      struct psock *ps = k->held[i];
      k->held[i] = k->held[--k->nheld];
      drop_ref(ps, false, false);
      return;
    }
}

/* The child's channel: claims and releases; false once it is gone. */
static bool serve_kid(struct kid *k) {
  for (int i = 0; i < 64; i++) {
    struct fmsg m;
    int fd;
    int rc = recv_msg(k->chan, &m, &fd, MSG_DONTWAIT);
    if (fd >= 0)
      real.close(fd);
    if (rc == 0 || (rc < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
      return false;
    if (rc < 0)
      return true;
    if (m.type == MSG_CLAIM) {
      grant(k, m.serial);
    } else if (m.type == MSG_ACCEPT) {
      accept_for(k, m.serial);
    } else if (m.type == MSG_RELEASE) {
      release(k, m.serial);
    } else if (m.type == MSG_EXEC) {
      k->execd = true;
    } else if (m.type == MSG_CLOSING) {
      pthread_mutex_lock(&f_lock);
      for (struct relay *r = g_relays; r; r = r->next)
        if (r->kid == k && r->serial == m.serial) {
          r->closing = true;
          r->pidx = -1; /* looked at in this pass */
        }
      pthread_mutex_unlock(&f_lock);
    }
  }
  return true;
}

static void kid_gone(struct kid *k) {
  pthread_mutex_lock(&f_lock);
  for (struct kid **pp = &g_kids; *pp; pp = &(*pp)->next)
    if (*pp == k) {
      *pp = k->next;
      break;
    }
  for (struct relay *r = g_relays; r; r = r->next)
    if (r->kid == k) {
      r->kid = NULL;
      r->execd = k->execd;
      r->pidx = -1; /* looked at in this pass */
    }
  pthread_mutex_unlock(&f_lock);
  kid_free(k); /* what it did not claim, it let go */
}

static void *fork_thread(void *arg) {
  (void)arg;
  tp_inside = 1;
  struct pollfd *p = NULL;
  struct kid **kids = NULL;
  size_t cap = 0;
  for (;;) {
    int timeout = -1;
    size_t n = 1, nk = 0;
    pthread_mutex_lock(&f_lock);
    size_t want = 1;
    for (struct kid *k = g_kids; k; k = k->next)
      want++;
    for (struct relay *r = g_relays; r; r = r->next)
      want += 2;
    if (want > cap) {
      struct pollfd *np = realloc(p, want * sizeof(*p));
      if (np)
        p = np;
      struct kid **nk2 = np ? realloc(kids, want * sizeof(*kids)) : NULL;
      if (nk2)
        kids = nk2;
      if (np && nk2)
        cap = want;
    }
    if (!cap) { /* no memory even for the wake-up: try again shortly */
      pthread_mutex_unlock(&f_lock);
      struct timespec ts = {0, 10 * 1000000};
      nanosleep(&ts, NULL);
      continue;
    }
    p[0] = (struct pollfd){.fd = wake_fd, .events = POLLIN};
    for (struct kid *k = g_kids; k && n < cap; k = k->next) {
      p[n++] = (struct pollfd){.fd = k->chan, .events = POLLIN};
      kids[nk++] = k;
    }
    for (struct relay *r = g_relays; r; r = r->next) {
      r->pidx = -1;
      if (n + 2 > cap)
        continue; /* not watched this round: pumped anyway (below) */
      short ev = 0, sev = 0;
      if (!r->up_len && !r->kid_eof)
        ev |= POLLIN;
      if (r->down_len)
        ev |= POLLOUT;
      if (!r->down_len && !r->sess_eof)
        sev |= POLLIN;
      if (r->up_len)
        sev |= POLLOUT;
      if (r->idle_wakes > 2) { /* ready yet stuck (a retention cap): a short pause */
        sev = 0;
        timeout = 2;
      }
      /* After the child's shutdown only its close is left, and a socket
       * shut down both ways polls hung up for good: not watched. */
      r->pidx = (int)n;
      p[n++] = (struct pollfd){.fd = ev || !r->kid_eof ? r->fd : -1, .events = ev};
      p[n++] = (struct pollfd){.fd = sev ? tether_fd(r->s) : -1, .events = sev};
    }
    struct relay *list = g_relays;
    pthread_mutex_unlock(&f_lock);
    if (n < want)
      timeout = 2; /* some relays unwatched (no memory): look at them often */
    if (real.poll(p, n, timeout) < 0) {
      struct timespec ts = {0, 1000000}; /* ENOMEM (signals are blocked) */
      nanosleep(&ts, NULL);
      continue;
    }
    if (p[0].revents) {
      uint64_t v;
      (void)!real.read(wake_fd, &v, sizeof(v));
    }
    /* Channels first: what they say (a close, an exit) decides how a
     * relay's hang-up is taken.  A claim adds a relay at the head of the
     * list: `list` and the links after it stay as they were. */
    for (size_t i = 0; i < nk; i++)
      if (p[i + 1].revents && !serve_kid(kids[i]))
        kid_gone(kids[i]);
    for (struct relay *r = list, *next; r; r = next) {
      next = r->next;
      bool woken = r->pidx < 0 || p[r->pidx].revents || p[r->pidx + 1].revents;
      if (!woken && r->idle_wakes <= 2)
        continue;
      bool done;
      bool moved = pump(r, &done);
      if (moved || r->idle_wakes > 2)
        r->idle_wakes = 0;
      else
        r->idle_wakes++;
      if (done)
        relay_end(r);
    }
    pthread_mutex_lock(&f_lock);
    passes++;
    pthread_cond_broadcast(&pass_cond);
    pthread_mutex_unlock(&f_lock);
  }
  return NULL;
}
