/* The engine: the context's libevent thread and the objects it shares with
 * application threads.  Internal; never installed.
 *
 * Threads.  Application threads run the data path (tether_read/tether_write
 * go straight to the kernel socket).  The engine thread runs heartbeats,
 * timers, the side channel, listeners, handshakes and reconnects.
 *
 * Locks, always taken in this order: ctx->lock (registry, listener queues),
 * then a session's rx_lock, then its tx_lock.  A session's state changes only
 * with both rx_lock and tx_lock held; the receive half (delivered, EOF) needs
 * rx_lock, the transmit half (sent, retention) tx_lock. */
#ifndef TETHER_ENGINE_H
#define TETHER_ENGINE_H

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "core/session.h"
#include "tether/tether.h"
#include "wire/control.h"
#include "wire/crypto.h"
#include "wire/handshake.h"

struct event;
struct event_base;

struct tether_config {
  uint32_t heartbeat_ms;
  uint32_t suspend_ms;
  uint32_t reconnect_max_ms;
  uint32_t give_up_s;
  uint32_t connect_timeout_ms;
  int log_level;
  bool durable;        /* this side may restart from snapshots */
  uint64_t retain_max; /* retention cap for a durable peer */
  uint64_t peer_rcvbuf_max; /* cap on a peer's declared receive buffer
                               (0: sock_host_rcvbuf_max()) */
  uint32_t read_spin_us; /* see tether_read's wait_readable */
  uint32_t accept_backlog; /* sessions a listener queues for tether_accept */
  uint32_t linger_s; /* closed sessions' last bytes: see ctx_linger() */
  uint32_t max_suspended;  /* sessions the context keeps suspended */
  uint8_t psk[PSK_MAX];
  size_t psk_len;
  tether_state_cb state_cb;
  void *state_cb_arg;
  struct event_base *base; /* the application's loop, or NULL */
};

/* An IPv4 or IPv6 socket address, as a session's endpoints are: 28 bytes
 * where a sockaddr_storage takes 128 (five per session, thousands of
 * sessions). */
union sock_addr {
  struct sockaddr sa;
  struct sockaddr_in in4;
  struct sockaddr_in6 in6;
};

/* A UDP side-channel socket shared by many sessions. */
struct udp_chan {
  struct tether_ctx *ctx;
  int fd;
  int family;
  uint16_t port;
  struct event *ev;
  /* On the application's loop with priorities: brings ev back after the
   * rest had a turn (udp.c, on_event). */
  struct event *rearm_ev;
  /* Front ends (the preload) may claim datagrams that are not control
   * datagrams: returns true when it took the datagram. Engine thread. */
  bool (*on_other)(struct udp_chan *u, const uint8_t *dg, size_t len,
                   const struct sockaddr *from, socklen_t fromlen);
};

/* The registry starts with this many buckets and doubles as it fills. */
#define SESSION_BUCKETS_MIN 256
#define PATH_BUCKETS 1024

/* A path: the sessions between one of our side-channel sockets and one
 * peer address (its context's side channel), which one heartbeat per
 * interval keeps alive together (path.c; tether(7), "Path heartbeats").
 * Engine thread only. */
struct tether_path {
  struct tether_ctx *ctx;
  struct tether_path *hash_next;
  struct udp_chan *udp;
  struct sockaddr_storage peer;
  socklen_t peer_len;
  unsigned n; /* connected sessions, in lists by their finest bucket */
  /* Per bucket of the finest bucketing (CTL_PATH_BUCKETS_MAX): its members
   * (s->path_next), how many, how many of them are not covered, and the
   * digest of their tags -- all kept as members join, leave and are
   * (un)covered, so that a beat costs no walk of the members while nothing
   * changes; coarser bucketings fold from these. */
  struct tether_session *lists[CTL_PATH_BUCKETS_MAX];
  uint32_t size[CTL_PATH_BUCKETS_MAX], uncovered[CTL_PATH_BUCKETS_MAX];
  uint32_t fine[CTL_PATH_BUCKETS_MAX];
  /* Beats in a row whose digest of a bucket differed from ours, per bucket
   * of the last beat's bucketing (strike_buckets). */
  uint8_t strikes[CTL_PATH_BUCKETS_MAX];
  uint32_t strike_buckets;
  uint64_t heard_ns; /* the peer's last path heartbeat (0: none yet) */
  uint64_t beat_rx_ns; /* when one was last taken into account */
  struct event *timer;
};
/* An ephemeral key serves at most this many handshakes, for at most this
 * long (see ctx_take_key). */
#define KEY_REUSE_MAX 64
#define KEY_REUSE_NS (10 * 1000000000ull)
/* The server's handshake table (hs_table.c, tether(7) "Handshake slots"):
 * slots for handshakes not known to be resumes, a budget of its own for
 * resumes of known sessions, the share of the slots beyond which a host's
 * stalled handshakes are evicted first, and how long a handshake may wait
 * for its peer's next message before it may be evicted from a full table. */
#define HS_TABLE_SLOTS 1024
#define HS_RESUME_SLOTS 1024
#define HS_HOST_SHARE (HS_TABLE_SLOTS / 8)
#define HS_STALL_MS 1000
#define HS_HOST_BUCKETS 256
#define ACCEPT_BACKLOG_DEFAULT 1024
/* See tether_config_set(3), TETHER_OPT_MAX_SUSPENDED. */
#define MAX_SUSPENDED_DEFAULT 4096

/* At most one message a second of one kind, telling how many were left out. */
struct log_limit {
  uint64_t next_ns;
  unsigned suppressed;
};

/* A listening socket's accept event, paused (a) after accept() ran out of
 * descriptors or memory: for 10 ms, doubling up to 1 s, back to 10 ms after
 * a success; (b) while the handshake table has no slot (listener.c only).
 * Engine thread. */
struct accept_gate {
  struct tether_ctx *ctx;
  struct event *accept_ev; /* the listening socket's (EV_READ|EV_PERSIST) */
  struct event *retry_ev;
  uint32_t backoff_ms;
  bool paused;
  bool wait_room; /* paused for want of a handshake slot */
  struct log_limit log;
};

struct hs_host;

/* Intrusive lists of handshakes (hs_table.c). */
struct hs_link {
  struct hs_conn *prev, *next;
};
struct hs_list {
  struct hs_conn *head, *tail;
};

/* Server handshakes in progress (hs_table.c).  Under ctx->lock, changed on
 * the engine thread only. */
struct hs_table {
  struct hs_list general; /* general slots, least recent progress first */
  struct hs_list parked;  /* waiting for room in an accept queue, in order */
  unsigned n_general, n_resume, n_parked;
  struct hs_host *hosts[HS_HOST_BUCKETS];
  /* Hosts holding more than HS_HOST_SHARE general slots (at most
   * HS_TABLE_SLOTS / HS_HOST_SHARE of them). */
  struct hs_host *big[HS_TABLE_SLOTS / HS_HOST_SHARE];
  unsigned n_big;
  bool room_wanted;       /* a listener waits for a free slot */
  struct event *room_ev;  /* accept queues have room: unpark */
  struct log_limit evict_log, refuse_log, fail_log;
};

struct tether_ctx {
  struct tether_config cfg;
  uint64_t read_spin_ns; /* cfg.read_spin_us, or 0 on a single CPU */
  struct event_base *base;
  bool own_base; /* false: the application's (tether_ctx_new_base), which
                    the application runs: no engine thread */
  pthread_t thread;
  bool thread_started;
  /* The process's live contexts, for the exit handler (ctx.c): the one
   * that made this context, and whether a front end (the preload) ends it
   * at exit itself. */
  struct tether_ctx *live_next;
  pid_t pid;
  bool exit_by_front_end;
  struct event *stop_ev;

  pthread_mutex_t lock; /* registry, listener queues */
  /* The registry: sessions by id, chained, about one per bucket at most
   * (the table doubles as it fills: a lookup per datagram and per resume
   * stays short with 100,000 sessions). */
  struct tether_session **buckets;
  unsigned n_buckets; /* a power of two */
  unsigned n_sessions;
  struct tether_path *paths[PATH_BUCKETS]; /* engine thread */
  struct tether_listener *listeners;
  struct hs_conn *handshakes; /* in progress, server side and redials */
  struct hs_table hst;        /* the server side's share of them */

  struct udp_chan *udp4, *udp6; /* for sessions this side connected */
  /* The sessions the engine last saw SUSPENDED, longest suspended first
   * (suspended.c).  Under lock. */
  struct {
    struct tether_session *head, *tail;
    unsigned n;
    struct log_limit evict_log;
    struct event *recheck; /* over the bound, once the oldest's grace ends */
  } suspended;
  uint32_t captures; /* snapshots taken (numbers them; under lock) */

  /* The ephemeral X25519 key new handshakes use, and its successor, made
   * ahead of time by the engine so key generation is off the critical path. */
  struct x25519_key *key, *next_key;
  unsigned key_uses;
  uint64_t key_born_ns;
  bool refill_pending;
  struct event *refill_ev;

  /* The ends of live connections (FIN, reset): an epoll set of its own
   * holding each connected session's socket with EPOLLRDHUP|EPOLLET only,
   * so that data never wakes the engine (libevent reports a reset as
   * readable and writable, not as EV_CLOSED).  Engine thread. */
  int hup_ep;
  struct event *hup_ev;

  /* Front ends (the preload): called on the engine thread with a redial's
   * socket before it connects. */
  void (*redial_hook)(struct tether_session *s, int fd);
};

struct tether_listener {
  struct tether_ctx *ctx;
  struct tether_listener *next;
  int fd;
  int port;
  struct udp_chan *udp;
  struct event *ev;
  int ready_fd; /* eventfd (semaphore): one count per queued session */
  bool nonblocking;
  bool closed;
  struct tether_session *queue_head, *queue_tail;
  /* The accept queue's bound (cfg.accept_backlog) counts the sessions in it
   * and the new ones whose setup has gone past the ClientHello (reserved).
   * Under ctx->lock. */
  unsigned queued, reserved;
  struct accept_gate gate;
  /* tether_listener_set_accept_cb: new sessions go there, not to the
   * queue (application's loop). */
  tether_accept_cb accept_cb;
  void *accept_arg;
};

struct tether_session {
  struct tether_ctx *ctx;
  struct tether_session *hash_next;  /* registry chain */
  struct tether_session *queue_next; /* listener accept queue */
  struct tether_listener *queued_on; /* the listener whose queue holds it (ctx->lock) */
  pthread_mutex_t rx_lock, tx_lock;
  unsigned tx_wanted; /* threads in session_lock() waiting for tx_lock: atomic */

  struct core_session core;
  uint8_t id[SESSION_ID_LEN];
  struct session_keys keys;
  bool is_client;

  int sock;   /* current TCP socket, -1 while suspended */
  int app_fd; /* the stable number the application polls, -1 after close */
  int app_kind; /* what app_fd refers to now: an APP_FD_* value */
  int hold_w; /* the WAIT or HELD pipe's write end while app_fd is its
                 read end */
  bool held_marked; /* HELD: the pipe holds a byte (the socket is readable) */
  /* Threads blocked in the data path (waiters.c): woken whenever app_fd
   * changes.  waiters_lock is innermost: taken under any other lock. */
  pthread_mutex_t waiters_lock;
  struct app_waiter *waiters;
  bool nonblocking;
  bool read_spin; /* the last blocking wait to read was short: spin first */
  bool reader_in_recv; /* a blocking tether_read sleeps in recv() on sock,
                          without rx_lock (recv_transport): rx_lock */
  uint32_t transport_gen; /* sockets retired so far: both locks to change */
  uint32_t blocking_gen; /* transport_gen + 1 once recv_transport cleared the
                            socket's O_NONBLOCK: rx_lock */
  bool app_closed; /* the application let go: the engine owns it */
  bool done;       /* closed, finished and past TIME_WAIT: free it */
  /* Sockets taken out of service (shut down) but not yet closed: only the
   * engine closes them, after removing its events. */
  int retired[4];
  int n_retired;

  union sock_addr dial_addr; /* client: the server's listening address */
  socklen_t dial_len;
  /* The first transport's TCP endpoints: the connection the application
   * accepted or made, whatever later ones are. */
  union sock_addr tcp_peer, tcp_local;
  socklen_t tcp_peer_len, tcp_local_len;
  union sock_addr udp_peer; /* where heartbeats go */
  socklen_t udp_peer_len;
  struct udp_chan *udp;
  /* Its path while connected (path.c; engine thread), and its path tag:
   * a secret both ends derive from the session's keys. */
  struct tether_path *path;
  struct tether_session *path_prev, *path_next;
  uint64_t path_tag;

  struct event *timer;
  uint64_t timer_due_ns; /* the core's deadline the timer was last set for
                            (atomic: session_start sets it off the engine) */
  uint8_t timer_yields; /* on_timer found a lock busy so many times in a row */
  /* The transport's TCP keepalive (sock_keepalive): none yet on a new
   * session's first connection; short while the side channel is not proven
   * (it is then the detector of an idle connection's death); long once it
   * is (paths watch the peer, and a probe a minute keeps NAT state) --
   * switched at the session's heartbeats.  Engine thread. */
  enum keepalive { KEEPALIVE_NONE, KEEPALIVE_SHORT, KEEPALIVE_LONG } keepalive;
  struct event *sock_ev;
  short sock_ev_flags;
  int sock_ev_fd;
  struct event *kick;
  struct hs_conn *redials[2];
  struct hs_conn *finishing; /* the redial that sent ResumeFinish */
  tether_state reported;

  /* Front ends (the preload) that give app_fd numbers of their own: when
   * set, called with both locks held instead of dup3(fd, app_fd) whenever
   * app_fd must point at a new file of kind `kind` (an APP_FD_* value). */
  void (*app_fd_hook)(struct tether_session *s, int fd, int kind);
  void *hook_arg;

  /* The counters the latest snapshots captured, until one is committed
   * (tether_snapshot_commit).  Both locks. */
  struct {
    uint32_t capture; /* 0: unused */
    uint64_t sent, delivered;
    bool finished; /* the session was CLOSED */
  } captured[4];
  unsigned next_captured;
  bool restored_unresumed; /* restored, not yet resumed: peer position unknown */
  int hup_sock; /* the socket in ctx->hup_ep, -1: none (engine thread) */
  /* Its place in ctx->suspended: links under ctx->lock; susp_listed
   * (whether it is there) is the engine thread's. */
  struct tether_session *susp_prev, *susp_next;
  bool susp_listed;
  /* A control datagram that arrived while a writer held tx_lock (in send):
   * the latest, for the writer to apply when done, or the engine at its
   * next turn.  Set under rx_lock; ctl_deferred also read atomically. */
  struct {
    struct core_ctl ctl;
    union sock_addr from;
    socklen_t fromlen;
  } deferred;
  bool ctl_deferred;

  /* Server, no pre-shared key: the client's ClientFinish still heads the
   * socket (see on_client_hello); read and checked before any byte
   * (session_finish_due).  Usually it arrives whole and is read at once,
   * without finish_rd; a reader (4 KiB) is allocated only for one that
   * arrives in pieces.  Both NONE/NULL once read, or once the connection it
   * came on is gone.  rx_lock. */
  enum { FINISH_NONE, FINISH_DUE, FINISH_READING } finish;
  struct hs_reader *finish_rd; /* READING only */
  uint8_t finish_mac[MAC_LEN]; /* the ClientFinish.confirm expected */
  /* Fires connect_timeout_ms after setup: a ClientFinish still missing then
   * (read or not) drops the session (listener.c).  Engine thread. */
  struct event *confirm_ev;
  /* A session on the application's loop (async.c): its buffers, events and
   * callbacks; NULL for the blocking API's. */
  struct async_io *async;
};

/* What the application's fd refers to.  poll() attaches to the files it
 * sees on its first pass only, so a sleeping poller never notices that the
 * number now names another file.  Hence every transition installs READY and
 * wakes the old file, sending pollers back to the application, whose next
 * tether_* call installs the file for the new state (app_fd_fixup).  The
 * library's own waits are also woken through eventfds (waiters.c): a woken
 * poller may look only after another thread's call replaced READY. */
enum {
  APP_FD_SOCK,  /* the live TCP socket (connected) */
  APP_FD_READY, /* an eventfd holding 1: readable and writable */
  APP_FD_WAIT,  /* a pipe's read end: never ready until its writer closes */
  APP_FD_HELD,  /* connected, but a writer is held back (no retention room):
                   a pipe's read end, never writable, readable (a byte in
                   the pipe, held_marked) while the socket has bytes to
                   read -- kept so by the engine, which watches the socket
                   meanwhile, and by tether_read; READY once there is room */
};

/* ---- handshakes (handshake_conn.c) ---- */

enum hs_kind { HS_CLIENT_NEW, HS_CLIENT_RESUME, HS_SERVER };

/* One handshake on one TCP connection, driven by readiness, from either a
 * blocking loop (tether_connect) or the engine's events. */
struct hs_conn {
  struct tether_ctx *ctx;
  struct hs_conn *next, *prev; /* ctx->handshakes */
  enum hs_kind kind;
  int fd;
  int step;
  bool connecting; /* non-blocking connect() still in progress */
  bool preface_sent;
  struct hs_reader rd;
  uint8_t out[HS_PREFACE_LEN + 4 + HS_FRAME_MAX];
  size_t out_len, out_off;
  struct x25519_key *key;
  uint8_t nonce_c[NONCE_LEN], nonce_s[NONCE_LEN];
  struct hs_transcript t;
  struct session_keys keys;
  uint64_t peer_rcvbuf;
  uint32_t peer_udp_port;
  bool peer_durable; /* the peer may restart from snapshots */
  struct tether_session *session; /* resume: the session concerned */
  struct connect_req *req;        /* tether_connect_async's (async.c) */
  struct core_resume_state peer_state;
  struct tether_listener *listener;
  struct sockaddr_storage peer;
  socklen_t peer_len;
  struct event *ev, *timeout;
  const char *why;
  bool finish_later; /* server: done before the ClientFinish; its MAC: */
  uint8_t finish_mac[MAC_LEN];
  /* Server, resume: the key that MACs our Reject (see hs_reject_mac). */
  bool reject_keyed;
  uint8_t reject_key[KEY_LEN];
  /* Server: its place in ctx->hst (hs_table.c). */
  struct {
    enum { HS_SLOT_NONE, HS_SLOT_GENERAL, HS_SLOT_RESUME } kind;
    struct hs_link by_age;  /* general slots, by last progress */
    struct hs_link by_host; /* its host's, likewise */
    struct hs_link parked_link;
    bool parked;
    bool reserved; /* holds a place in its listener's accept queue */
    struct hs_host *host;
    uint64_t progress_ns; /* admitted, or the peer's last complete message */
  } slot;
};

#define HS_DONE 1
#define HS_WANT_READ 2
#define HS_WANT_WRITE 3
#define HS_WANT_ROOM 4 /* server: the listener's accept queue is full */

struct hs_conn *hs_conn_new(struct tether_ctx *ctx, enum hs_kind kind, int fd);
void hs_conn_free(struct hs_conn *h);
/* Advances as far as the socket allows: HS_DONE, HS_WANT_READ/WRITE, or a
 * negative error (h->why says why). */
int hs_conn_advance(struct hs_conn *h);
/* Engine-driven handshakes: register events; hs_conn_finish() is called once.
 * A server handshake takes a slot in ctx->hst (hs_table_admit_locked): -EAGAIN
 * (logged) when there is none. */
int hs_conn_start_async(struct hs_conn *h, uint64_t timeout_ms);
void hs_conn_abort(struct hs_conn *h);
/* Engine thread: ends a server handshake to make room for another (a
 * Reject{BUSY} if the peer speaks tether, then hs_conn_abort). */
void hs_conn_evict(struct hs_conn *h);
/* Engine thread: a parked server handshake carries on (or parks again). */
void hs_conn_unpark(struct hs_conn *h);

/* ---- the server's handshake table (hs_table.c) ---- */

int hs_table_init(struct tether_ctx *ctx);
/* Context teardown (engine stopped, handshakes freed). */
void hs_table_clear(struct tether_ctx *ctx);
/* How long a handshake may stall before a full table evicts it. */
uint64_t hs_stall_ns(const struct tether_ctx *ctx);
/* Engine thread: whether a new connection can have a slot now (one is free,
 * or can be freed by evicting a stalled handshake); if not, *wait_ns is how
 * long until one may be. */
bool hs_table_room(struct tether_ctx *ctx, uint64_t *wait_ns);
/* Engine thread, ctx->lock held: takes a slot for a server handshake,
 * choosing in *victim the handshake to evict if the table is full.
 * -EAGAIN when it is full and none has stalled. */
int hs_table_admit_locked(struct hs_conn *h, struct hs_conn **victim);
/* ctx->lock held: gives up h's slot (and its place among the parked). */
void hs_table_leave_locked(struct hs_conn *h);
/* Engine thread: a complete message from the peer. */
void hs_table_progress(struct hs_conn *h);
/* Engine thread: h resumes a known session: it moves to the resume budget
 * if that has room. */
void hs_table_resume(struct hs_conn *h);
/* Engine thread: h waits for room in its listener's accept queue. */
void hs_table_park(struct hs_conn *h);
/* Any thread: an accept queue has room again (ctx->lock held). */
void hs_table_room_freed_locked(struct tether_ctx *ctx);

/* ---- sessions (session.c; data path io.c, app fd appfd.c, control
 * datagrams session_ctl.c, restores restore.c) ---- */

/* The core's configuration from the context's. */
struct core_config session_core_config(const struct tether_config *cfg);

/* async: a session of the application's loop (async.c): it gets no app
 * fd. */
struct tether_session *session_new(struct tether_ctx *ctx, const struct hs_conn *h,
                                   bool is_client, bool async);
/* A suspended session rebuilt from its snapshot (see snapshot.c); l is its
 * listener (server side).  NULL with *err on failure. */
struct Tether__Snap__Session;
struct tether_session *session_restore(struct tether_ctx *ctx,
                                       const struct Tether__Snap__Session *m,
                                       struct tether_listener *l, int *err);
/* Registers the session's events with the engine and starts its timer. */
int session_start(struct tether_session *s);
/* Server, no pre-shared key: the client's ClientFinish (MAC h->finish_mac)
 * will head the socket.  -ENOMEM. */
int session_expect_finish(struct tether_session *s, const struct hs_conn *h);
/* rx_lock held: reads and checks the ClientFinish if it still heads the
 * socket, so that what follows is the application's.  Like recv(): 1 when
 * nothing of ours is left there (or the check failed the session: look at
 * its state), 0 at EOF, -1 with errno (EAGAIN: not all of it arrived). */
int session_take_finish_locked(struct tether_session *s);
/* rx_lock held: the ClientFinish has yet to be read (see finish). */
static inline bool session_finish_due(const struct tether_session *s) {
  return s->finish != FINISH_NONE;
}
/* Both locks held: the transport failed; install the placeholder and let the
 * engine retire the socket. */
void session_suspend_locked(struct tether_session *s, uint64_t now, const char *why);
/* Engine thread: a resume handshake succeeded on h->fd. */
void session_attach(struct tether_session *s, struct hs_conn *h);
/* Both locks held: takes the current socket out of service at once (any
 * thread); the engine closes it later. */
void session_retire_locked(struct tether_session *s);
void session_kick(struct tether_session *s);
/* Fails the session with a TETHER_E* error; the engine settles it. */
void session_fail(struct tether_session *s, int err);
/* Engine thread: an authenticated control datagram for s, which may carry
 * its path's heartbeat (path->buckets > 0). */
void session_on_ctl(struct tether_session *s, const struct core_ctl *ctl,
                    const struct ctl_path *path, const struct sockaddr *from, socklen_t fromlen);
/* Both locks held: a heartbeat (with path: also its path's), unless the
 * TCP connection has been silent for suspend_ms: then the session is
 * suspended instead (false). */
bool session_heartbeat_locked(struct tether_session *s, uint64_t now,
                              const struct ctl_path *path);
/* Engine thread: the session's timer fires at `at` (its path stopped
 * vouching for it, or it may have something to say). */
void session_timer_at(struct tether_session *s, uint64_t at);
void session_destroy(struct tether_session *s);
/* Engine thread: the connection of a session in ctx->hup_ep ended. */
void session_on_hangup(struct tether_session *s);
void session_lock(struct tether_session *s);
/* tether_write's tx_lock: after any session_lock() waiting for it. */
void session_tx_lock_writer(struct tether_session *s);
void session_unlock(struct tether_session *s);
/* Engine thread: the session's timer fires within delay_ns (sooner if its
 * deadline is), without moving that deadline. */
void session_timer_soon(struct tether_session *s, uint64_t delay_ns);
/* How long a datagram left for a writer (session_on_ctl) may wait for it
 * before the engine applies it itself. */
#define CTL_DEFER_NS (5 * 1000000ull)
/* Engine thread, both locks held: brings the engine's view (app fd, events,
 * timer) in line with whatever changed, unlocks, reports a new state to the
 * application's callback, and frees the session if it is over.  Returns
 * true when it did (s is gone). */
bool session_settle_unlock(struct tether_session *s);
/* Both locks held: pushes a pending resend into the socket. */
void session_flush_locked(struct tether_session *s);
/* rx_lock held (tx_lock too if tx_locked): reads bytes of the peer's replay
 * after its rollback and checks them against what was delivered.  recv's
 * result; on a difference the session has failed and the peer is told. */
ssize_t session_take_replay_locked(struct tether_session *s, bool tx_locked);
/* Both locks held: applies a control datagram that waited for a writer. */
void session_apply_deferred_locked(struct tether_session *s);
/* Writer thread, tx_lock held, after a write: applies such a datagram if
 * the reading side is free, else leaves it to the engine (kicked). */
void session_writer_takes_deferred(struct tether_session *s);
/* Both locks held: any transition; pollers return (see APP_FD_READY). */
void app_fd_ready(struct tether_session *s);
/* Application thread, at the start of every data-path call: installs the
 * file the current state calls for. */
void app_fd_fixup(struct tether_session *s);
/* Both locks held, connected, no retention room: installs HELD so that
 * pollers are not told "writable" while a write would fail with EAGAIN. */
void app_fd_hold(struct tether_session *s);
/* Both locks held: a HELD app fd is readable exactly while the socket has
 * bytes to read (after bytes arrived, or the application read them). */
void app_fd_held_sync(struct tether_session *s);
/* Engine thread, both locks held: ends HELD once there is room again, or
 * the session left CONNECTED. */
void app_fd_release(struct tether_session *s);

/* ---- waiting in the data path (waiters.c) ---- */

/* A thread blocked on a session's app fd, on the stack of its wait. */
struct app_waiter {
  struct app_waiter *next;
  int efd;    /* the thread's wake eventfd; -1: none (out of descriptors) */
  bool woken; /* its eventfd was written to (waiters_lock) */
};
/* How waits poll: ppoll, or the raw one where ppoll is interposed. */
extern int (*engine_ppoll)(struct pollfd *, nfds_t, const struct timespec *, const sigset_t *);
/* Registers the calling thread.  Then either app_waiter_wait or
 * app_waiter_remove. */
void app_waiter_add(struct tether_session *s, struct app_waiter *w);
void app_waiter_remove(struct tether_session *s, struct app_waiter *w);
/* Waits until fd may be ready for `events`, app_fd changes or
 * app_waiters_wake (timeout_ms < 0: no limit; mask: the signal mask during
 * the wait, as ppoll's, or NULL), and unregisters w.  Returns 0 (look
 * again), -EAGAIN (timed out) or -EINTR. */
int app_waiter_wait(struct tether_session *s, struct app_waiter *w, int fd, short events,
                    int timeout_ms, const sigset_t *mask);
/* Both of the above, without a time limit: 0 or -EINTR. */
int app_wait(struct tether_session *s, int fd, short events, const sigset_t *mask);
/* For a wait that polls w->efd among other descriptors and stays
 * registered across its polls: after each, with the revents of w->efd,
 * whether w was woken (it is armed again) or its eventfd was taken from us
 * (it waits without one from now on).  Either way: look again. */
bool app_waiter_rearm(struct tether_session *s, struct app_waiter *w, short efd_revents);
/* Wakes every waiting thread: they look again.  Any lock may be held. */
void app_waiters_wake(struct tether_session *s);
/* In a forked child: the forking thread's wake eventfd is its parent's. */
void app_waiters_after_fork_child(void);

/* ---- client side (client.c) ---- */

void client_redial(struct tether_session *s);
/* Whether a redial's error ends the session (the server's verdict) rather
 * than calling for another attempt. */
static inline bool redial_err_final(int err) {
  return err == TETHER_ESESSIONGONE || err == TETHER_EVERSION || err == TETHER_EWINDOW ||
         err == TETHER_EDIVERGED;
}
void client_redial_done(struct tether_session *s, struct hs_conn *h, int rc);
/* The handshake of a tether_connect_async() ended (the loop's thread). */
void client_connect_done(struct hs_conn *h, int rc);
/* Context teardown: h's tether_connect_async() is dropped with it. */
void client_connect_drop(struct hs_conn *h);

/* ---- sessions on the application's loop (async.c) ---- */

/* Makes s (new, started, without an app fd) a session of the loop.  0 or
 * -ENOMEM. */
int async_attach(struct tether_session *s);
/* Loop thread, both locks held (settle): notices s's new state, room and
 * socket, and schedules the work they call for. */
void async_settle_locked(struct tether_session *s);
/* The engine is about to close fd, one of s's retired sockets. */
void async_forget_sock(struct tether_session *s, int fd);
/* tether_close() of a loop session: its output is written first. */
int async_close(struct tether_session *s);
/* Whether a loop session the application closed still writes its output. */
bool async_closing(const struct tether_session *s);
/* Whether s holds bytes in its buffers (a snapshot cannot capture them). */
bool async_buffered(const struct tether_session *s);
/* session_destroy: frees s's loop part. */
void async_free(struct tether_session *s);
/* tether_close() without the loop session's output: the application let go. */
int session_close(struct tether_session *s);
/* tether_shutdown() of a loop session: after its output. */
int async_shutdown(struct tether_session *s);
/* tether_shutdown() now. */
int session_shutdown(struct tether_session *s);

/* ---- server side (listener.c) ---- */

void listener_handshake_done(struct hs_conn *h, int rc);
/* Server resume: the client proved the key; retire the old transport and
 * capture our state.  Returns 0 or a negative error. */
int listener_resume_authenticated(struct hs_conn *h, struct core_resume_state *ours);
/* tether_listen(), but with `start` false the listener only takes
 * connections (queued by the kernel meanwhile) after listener_start(). */
int listener_open(struct tether_ctx *ctx, const char *host, const char *port, bool start,
                  struct tether_listener **out);
void listener_start(struct tether_listener *l);
/* Appends a new session to l's accept queue and wakes acceptors; reserved:
 * it takes the place its setup reserved (listener_reserve). */
void listener_enqueue(struct tether_listener *l, struct tether_session *s, bool reserved);
/* Engine thread: whether h's listener can take one more new session (its
 * setup then goes on; true also when the listener is closed, for the
 * setup to be refused).  Reserves the place. */
bool listener_reserve(struct hs_conn *h);
/* Gives back h's reserved place. */
void listener_unreserve(struct hs_conn *h);
/* Whether tether_listener_close() was called (from any thread: an atomic
 * flag, read without ctx->lock where that suffices). */
static inline bool listener_closed(const struct tether_listener *l) {
  return __atomic_load_n(&l->closed, __ATOMIC_ACQUIRE);
}

/* ctx->lock held: whether listener_reserve would succeed. */
bool listener_has_room_locked(const struct tether_listener *l);
/* Context teardown (engine stopped). */
void listener_free(struct tether_listener *l);

/* ---- client (client.c) ---- */

/* The context's side channel for sessions it connects (opened on first
 * use); NULL if it cannot be opened. */
struct udp_chan *client_udp(struct tether_ctx *ctx, int family);

/* ---- the read spin's signals (spin.c) ---- */

struct spin_hold {
  sigset_t old;
};
/* Holds back the thread's signals for a spin. */
void spin_hold(struct spin_hold *h);
/* Lets them in again: -EINTR when one came that would have interrupted a
 * blocking wait (its handler has run by the time this returns), else 0. */
int spin_release(struct spin_hold *h);
/* The spin found nothing: waits for s's app fd as app_wait does, with the
 * thread's own signal mask back in place atomically (ppoll), so that a
 * signal that came during the spin, or comes now, ends it: -EINTR, else 0.
 * The signals are held back again on return: spin_release. */
int spin_wait(struct spin_hold *h, struct tether_session *s, short events);

/* ---- context (ctx.c) ---- */

uint64_t now_ns(void);
/* What an event is for, on the application's loop (tether_config_set_event_base)
 * when it has several priorities: what tells us that peers live (the side
 * channel's datagrams, the ends of connections) takes the highest, so that
 * they are read in time however many sessions have bytes to move or are
 * being set up -- a socket buffer that overflows loses heartbeats, and
 * sessions suspend though their peers are fine; the rest (timers,
 * accepting, handshakes, the sessions' bytes in async.c) the lowest, where
 * libevent's dispatch interval takes turns.  On an engine thread's own
 * loop there is one priority. */
enum engine_prio { ENGINE_PRIO_LIVE, ENGINE_PRIO_BULK };
struct event *engine_event_new(struct tether_ctx *ctx, enum engine_prio prio, int fd, short what,
                               void (*cb)(int, short, void *), void *arg);
/* The same for an event (re)assigned with event_assign. */
void engine_event_prio(const struct tether_ctx *ctx, struct event *ev, enum engine_prio prio);
/* Waits, up to cfg.linger_s, while sessions the application closed still
 * deliver their last bytes and close notices (also across a resume); those
 * still unfinished then fail with TETHER_EABORTED, and their peers are told
 * at once.  Application thread, engine running. */
void ctx_linger(struct tether_ctx *ctx);
/* Stops the engine thread (not from the engine thread itself). */
void ctx_stop_engine(struct tether_ctx *ctx);
/* A reference to the current ephemeral key (made now if there is none);
 * NULL on failure. */
struct x25519_key *ctx_take_key(struct tether_ctx *ctx);
uint32_t random_u32(void);
void registry_add(struct tether_ctx *ctx, struct tether_session *s);
void registry_remove(struct tether_ctx *ctx, struct tether_session *s);
/* ctx->lock held. */
struct tether_session *registry_find(struct tether_ctx *ctx, const uint8_t id[SESSION_ID_LEN]);

/* ---- side channel (udp.c) ---- */

struct udp_chan *udp_open(struct tether_ctx *ctx, int family, const struct sockaddr *bind_addr,
                          socklen_t len);
void udp_close(struct udp_chan *u);
/* Handles the datagrams already queued (engine thread). */
void udp_drain(struct udp_chan *u);
/* Sends a control datagram for s (both locks held). */
void udp_send_ctl(struct tether_session *s, uint64_t now);

/* Both locks held: a control datagram for s that also carries its path's
 * heartbeat (path may be NULL). */
void udp_send_ctl_path(struct tether_session *s, uint64_t now, const struct ctl_path *path);

/* ---- paths (path.c) ---- */

/* s's path tag, from its keys (session_new, session_restore). */
void path_tag_init(struct tether_session *s);
/* Engine thread, both locks held: s joins the path its state and address
 * call for (connected, with a side channel), or leaves its path. */
void path_update(struct tether_session *s);
/* Engine thread: s is being destroyed. */
void path_leave(struct tether_session *s);
/* Any thread, after the application read or wrote: a covered session whose
 * timer is off (it was quiet) kicks the engine, which arms it again. */
void path_talks(struct tether_session *s);
/* Engine thread, before a covered session's own timer decides anything:
 * its path's last heartbeat counts as heard for it. */
void path_stamp(struct tether_session *s);
/* Engine thread: an authenticated, fresh control datagram of `anchor` from
 * `from` carried its path's heartbeat. */
void path_on_beat(struct tether_session *anchor, const struct ctl_path *p,
                  const struct sockaddr *from, socklen_t fromlen);

/* ---- suspended sessions (suspended.c) ---- */

/* Engine thread, no session lock held: after any change of s's state, counts
 * it among the context's suspended sessions or not, and lets the one
 * suspended longest fail (TETHER_EEVICTED) while there are more than
 * cfg.max_suspended.  Cheap unless s entered or left SUSPENDED. */
void suspended_note(struct tether_session *s);
/* s is being destroyed: it leaves the count. */
void suspended_forget(struct tether_session *s);
/* The context's event: evicts what is over the bound and past its grace. */
void suspended_recheck(int fd, short what, void *arg);
/* Engine thread, no lock held: the host at dst (s->udp_peer, else ignored)
 * reported that nothing listens there, for our control datagram seq (see
 * core_on_unreachable). */
void session_on_unreachable(struct tether_session *s, uint64_t seq, const struct sockaddr *dst,
                            socklen_t dstlen);

/* ---- sockets (sock.c) ---- */

int sock_set_nonblock(int fd);
/* Options every session socket gets at once: TCP_NODELAY, SO_LINGER {1,0}. */
void sock_setup_session(int fd);
/* Keepalive: probes after suspend_ms of silence, every suspend_ms (short),
 * or after SOCK_KEEPIDLE_LONG_S (long: the side channel works).  For a
 * session's first connection at its first heartbeat (a session that ends
 * before then never needs it), for a resumed one at once. */
#define SOCK_KEEPIDLE_LONG_S 60
void sock_keepalive(int fd, const struct tether_config *cfg, bool long_idle);
/* Whether TCP itself finds the path dead: bytes or probes outstanding and
 * no acknowledgement from the peer for limit_ms.  A peer that acknowledges
 * but does not read (zero window) is alive. */
bool sock_path_silent(int fd, uint32_t limit_ms);
/* The most this socket's kernel may buffer for receiving / sending. */
uint64_t sock_rcvbuf_max(int fd);
uint64_t sock_sndbuf_max(int fd);
/* The largest buffers sockets on this host autotune to (tcp_rmem, tcp_wmem). */
uint64_t sock_host_rcvbuf_max(void);
uint64_t sock_host_sndbuf_max(void);
uint64_t sock_outq(int fd);
int sock_resolve(const char *host, const char *port, bool passive, struct addrinfo **out);
const char *sock_addr_str(const struct sockaddr *sa, char *buf, size_t len);
/* Whether a and b are the same IP address (an IPv4 one and its IPv4-mapped
 * IPv6 form are), and with_port, the same port too. */
bool sock_addr_same(const struct sockaddr *a, socklen_t alen, const struct sockaddr *b,
                    socklen_t blen, bool with_port);
/* The address as 16 bytes (IPv4 as IPv4-mapped IPv6) and its port (network
 * order); false if it is neither IPv4 nor IPv6 or too short. */
bool sock_addr_key(const struct sockaddr *sa, socklen_t len, uint8_t ip[16], uint16_t *port);

/* ---- accepting without spinning (accept_gate.c) ---- */

int accept_gate_init(struct accept_gate *g, struct tether_ctx *ctx, struct event *accept_ev);
void accept_gate_clear(struct accept_gate *g);
/* accept() succeeded. */
static inline void accept_gate_ok(struct accept_gate *g) { g->backoff_ms = 0; }
/* accept() failed with err: returns true when the caller should go on
 * accepting (a connection's own failure), false when it must stop (the
 * gate paused the event, and logged the error at a bounded rate). */
bool accept_gate_failed(struct accept_gate *g, int err);
/* No handshake slot: pause for wait_ns or until hs_table frees one. */
void accept_gate_wait_room(struct accept_gate *g, uint64_t wait_ns);
/* A slot is free: watch again at once (ctx->lock may be held). */
void accept_gate_room(struct accept_gate *g);

/* ---- logging (log.c) ---- */

void tlog(const struct tether_ctx *ctx, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
#define LOG_ERR(ctx, ...) tlog(ctx, TETHER_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(ctx, ...) tlog(ctx, TETHER_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(ctx, ...) tlog(ctx, TETHER_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(ctx, ...) tlog(ctx, TETHER_LOG_DEBUG, __VA_ARGS__)
/* tlog() at most once a second per lim; the next line that passes tells how
 * many were suppressed meanwhile. */
void tlog_limited(const struct tether_ctx *ctx, struct log_limit *lim, int level, const char *fmt,
                  ...) __attribute__((format(printf, 4, 5)));
/* A short printable form of a session id for logs. */
const char *session_tag(const uint8_t id[SESSION_ID_LEN], char buf[17]);

void config_defaults(struct tether_config *cfg);

#endif
