/*
 * tether — TCP sessions that outlive their TCP connection.
 *
 * One public header.  Every handle is opaque.  Functions that can fail return
 * a negative error code: either a negated errno value (-EAGAIN, -EINVAL, ...)
 * or one of tether's own TETHER_E* codes below.  tether_strerror() names both.
 *
 * Thread safety: a context may be used from any number of threads.  A session
 * behaves like a socket: one thread may read while another writes, but two
 * concurrent reads (or two concurrent writes) on one session are not
 * supported, and tether_close() must not race with any other call on the same
 * session.  Callbacks run on the context's engine thread and must not block.
 *
 * See tether(7) for the model, the wire protocol and the guarantees.
 */
#ifndef TETHER_TETHER_H
#define TETHER_TETHER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(TETHER_STATIC)
#define TETHER_API
#elif defined(__GNUC__)
#define TETHER_API __attribute__((visibility("default")))
#else
#define TETHER_API
#endif

#define TETHER_VERSION_MAJOR 0
#define TETHER_VERSION_MINOR 1
#define TETHER_VERSION_PATCH 0
#define TETHER_VERSION_STRING "0.1.0"

/* Returns the library's version string (may differ from the header's). */
TETHER_API const char *tether_version(void);

/*
 * Errors.  One X-macro generates the codes, tether_strerror() and
 * tether_err_name().  X(name, value, kind, message).
 */
#define TETHER_ERROR_MAP(X)                                                     \
  X(TETHER_EGIVEUP, -10001, TETHER_ERRKIND_FINAL,                               \
    "session failed: could not reconnect within give_up_s")                     \
  X(TETHER_ESESSIONGONE, -10002, TETHER_ERRKIND_FINAL,                          \
    "session failed: the peer no longer knows this session")                    \
  X(TETHER_EWINDOW, -10003, TETHER_ERRKIND_FINAL,                               \
    "session failed: resume window exceeded (bytes needed are no longer held)") \
  X(TETHER_EDIVERGED, -10004, TETHER_ERRKIND_FINAL,                             \
    "session failed: divergent replay after a rollback")                        \
  X(TETHER_EAUTH, -10005, TETHER_ERRKIND_FINAL,                                 \
    "authentication failed")                                                    \
  X(TETHER_EPROTO, -10006, TETHER_ERRKIND_FINAL,                                \
    "protocol error: the peer does not speak tether or sent malformed data")    \
  X(TETHER_EVERSION, -10007, TETHER_ERRKIND_FINAL,                              \
    "unsupported tether protocol version")                                      \
  X(TETHER_ECLOSED, -10008, TETHER_ERRKIND_USAGE,                               \
    "session or listener is closed")                                            \
  X(TETHER_EABORTED, -10009, TETHER_ERRKIND_FINAL,                              \
    "session failed: the peer gave up delivering its last bytes (linger time)")  \
  X(TETHER_EEVICTED, -10010, TETHER_ERRKIND_FINAL,                              \
    "session failed: let go while suspended to make room for others "           \
    "(TETHER_OPT_MAX_SUSPENDED)")

typedef enum tether_errkind {
  TETHER_ERRKIND_NONE = 0,  /* not an error (>= 0) */
  TETHER_ERRKIND_TRANSIENT, /* try again later: EAGAIN, EINTR, ETIMEDOUT */
  TETHER_ERRKIND_FINAL,     /* the session/operation cannot succeed */
  TETHER_ERRKIND_USAGE,     /* the caller passed something wrong */
} tether_errkind;

enum tether_error {
#define TETHER_ERR_ENUM_(name, value, kind, msg) name = (value),
  TETHER_ERROR_MAP(TETHER_ERR_ENUM_)
#undef TETHER_ERR_ENUM_
};

/* Human-readable message for any code (tether's own or -errno). Never NULL. */
TETHER_API const char *tether_strerror(int err);
/* Symbolic name ("TETHER_EGIVEUP", "EAGAIN"); "UNKNOWN" if not known. */
TETHER_API const char *tether_err_name(int err);
/* What the application can do about err. */
TETHER_API tether_errkind tether_err_kind(int err);

/* ---- Configuration ---------------------------------------------------- */

typedef struct tether_config tether_config;
typedef struct tether_ctx tether_ctx;
typedef struct tether_listener tether_listener;
typedef struct tether_session tether_session;

typedef enum tether_option {
  TETHER_OPT_HEARTBEAT_MS = 1,     /* default 1000; env TETHER_HEARTBEAT_MS */
  TETHER_OPT_SUSPEND_MS,           /* default 3000; env TETHER_SUSPEND_MS */
  TETHER_OPT_RECONNECT_MAX_MS,     /* default 1000; env TETHER_RECONNECT_MAX_MS */
  TETHER_OPT_GIVE_UP_S,            /* default 86400, 0 = never; env TETHER_GIVE_UP_S */
  TETHER_OPT_CONNECT_TIMEOUT_MS,   /* first connect + handshake; default 10000 */
  TETHER_OPT_LOG_LEVEL,            /* a tether_log_level; env TETHER_LOG */
  TETHER_OPT_DURABLE,              /* 1: this side may restart from snapshots:
                                      its peers keep what its committed
                                      snapshots lack; default 0; env
                                      TETHER_DURABLE */
  TETHER_OPT_RETAIN_MAX_BYTES,     /* most bytes a session holds for a durable
                                      peer (writers wait beyond it); default
                                      64 MiB; env TETHER_RETAIN_MAX_BYTES */
  TETHER_OPT_READ_SPIN_US,         /* a blocking tether_read whose recent
                                      waits were short polls this long
                                      before it sleeps (0: never; only
                                      with more than one CPU); default 50;
                                      env TETHER_READ_SPIN_US */
  TETHER_OPT_PEER_RCVBUF_MAX_BYTES, /* most of a peer's declared receive
                                      buffer that is believed: a session
                                      retains up to its own send buffer
                                      plus this (0, the default: this
                                      host's net.ipv4.tcp_rmem maximum);
                                      env TETHER_PEER_RCVBUF_MAX_BYTES */
  TETHER_OPT_ACCEPT_BACKLOG,       /* new sessions a listener holds for
                                      tether_accept (those set up and those
                                      past their ClientHello); more clients
                                      wait; 1..65535, default 1024; env
                                      TETHER_ACCEPT_BACKLOG */
  TETHER_OPT_LINGER_S,             /* how long tether_ctx_free (and exit)
                                      waits for closed sessions to deliver
                                      their last bytes; then their peers
                                      fail with TETHER_EABORTED; 0..3600,
                                      default 30; env TETHER_LINGER_S */
  TETHER_OPT_MAX_SUSPENDED,        /* most sessions the context keeps
                                      suspended: beyond it the one
                                      suspended longest fails with
                                      TETHER_EEVICTED, once suspended for
                                      longer than connect_timeout_ms +
                                      reconnect_max_ms (a redial's time:
                                      an outage of all at once is ridden
                                      out); 1..1000000, default 4096; env
                                      TETHER_MAX_SUSPENDED */
} tether_option;

#define TETHER_RETAIN_MAX_DEFAULT ((int64_t)64 << 20)

typedef enum tether_log_level {
  TETHER_LOG_NONE = 0,
  TETHER_LOG_ERROR,
  TETHER_LOG_WARN, /* default */
  TETHER_LOG_INFO,
  TETHER_LOG_DEBUG,
} tether_log_level;

typedef enum tether_state {
  TETHER_STATE_CONNECTED = 1, /* bytes flow */
  TETHER_STATE_SUSPENDED,     /* transport lost; reconnecting transparently */
  TETHER_STATE_CLOSED,        /* both directions finished normally */
  TETHER_STATE_FAILED,        /* final error; see tether_session_error() */
} tether_state;

/* Called on the engine thread after every state change (err != 0 only for
 * TETHER_STATE_FAILED).  Must not block and must not call tether_close(). */
typedef void (*tether_state_cb)(tether_session *s, tether_state state, int err,
                                void *arg);

/* A configuration starts with the defaults.  NULL on allocation failure. */
TETHER_API tether_config *tether_config_new(void);
TETHER_API void tether_config_free(tether_config *cfg);
/* Returns 0, or -EINVAL for an unknown option or out-of-range value. */
TETHER_API int tether_config_set(tether_config *cfg, tether_option opt,
                                 int64_t value);
TETHER_API int tether_config_get(const tether_config *cfg, tether_option opt,
                                 int64_t *value);
/* Applies the TETHER_* environment variables that are set.  Returns 0 or
 * -EINVAL (nothing applied) when one of them is malformed. */
TETHER_API int tether_config_load_env(tether_config *cfg);
/* Optional pre-shared key (1..64 bytes) that also authenticates session
 * setup; both peers must use the same key. len 0 removes it. */
TETHER_API int tether_config_set_psk(tether_config *cfg, const void *key,
                                     size_t len);
TETHER_API void tether_config_set_state_cb(tether_config *cfg,
                                           tether_state_cb cb, void *arg);

/* ---- Context ----------------------------------------------------------- */

/* A context owns an engine thread, the UDP side channel and its sessions.
 * cfg == NULL means the defaults plus the environment.  The configuration is
 * copied. */
TETHER_API int tether_ctx_new(const tether_config *cfg, tether_ctx **out);
/* Closes every listener, drops every session (peers see them fail later, not
 * EOF) and frees the context.  Sessions must not be used afterwards. */
TETHER_API void tether_ctx_free(tether_ctx *ctx);

/* ---- Listening --------------------------------------------------------- */

/* Listens on host:port (host NULL or "" = all addresses; port "0" = any).
 * Also binds the UDP side channel to the same port number. */
TETHER_API int tether_listen(tether_ctx *ctx, const char *host,
                             const char *port, tether_listener **out);
/* The bound TCP port, in host byte order. */
TETHER_API int tether_listener_port(const tether_listener *l);
/* A descriptor that polls readable while a session is ready to accept. */
TETHER_API int tether_listener_fd(const tether_listener *l);
TETHER_API int tether_listener_set_nonblocking(tether_listener *l, int on);
/* Waits for (or, non-blocking, returns -EAGAIN without) the next session. */
TETHER_API int tether_accept(tether_listener *l, tether_session **out);
/* Stops accepting new sessions; accepted ones keep working and can still
 * resume. */
TETHER_API void tether_listener_close(tether_listener *l);

/* ---- Sessions ---------------------------------------------------------- */

/* Connects to host:port and runs the handshake (blocking, bounded by
 * TETHER_OPT_CONNECT_TIMEOUT_MS). */
TETHER_API int tether_connect(tether_ctx *ctx, const char *host,
                              const char *port, tether_session **out);

/* Like read(2)/write(2): >= 0 bytes, 0 from read only at the peer's real EOF,
 * or a negative code.  While suspended, blocking calls wait and non-blocking
 * ones return -EAGAIN. */
TETHER_API ssize_t tether_read(tether_session *s, void *buf, size_t len);
TETHER_API ssize_t tether_write(tether_session *s, const void *buf,
                                size_t len);
/* Ends the writing direction: the peer reads EOF after every byte. */
TETHER_API int tether_shutdown(tether_session *s);
/* Ends the session for the application and frees the handle.  Bytes already
 * written are still delivered (the engine keeps the session until the peer
 * has them, or give_up_s).  Bytes arriving afterwards are discarded and the
 * peer's writes fail with -EPIPE. */
TETHER_API int tether_close(tether_session *s);

/* A descriptor for poll(2)/select(2)/epoll(7): readable/writable exactly when
 * tether_read/tether_write can make progress.  Its number is stable for the
 * session's life, but the open file behind it changes across reconnects: use
 * poll/select, or re-register with epoll after TETHER_STATE_CONNECTED.  Never
 * read, write or close it directly. */
TETHER_API int tether_fd(const tether_session *s);
TETHER_API int tether_set_nonblocking(tether_session *s, int on);

TETHER_API tether_state tether_session_state(const tether_session *s);
/* The final error of a FAILED session, else 0. */
TETHER_API int tether_session_error(const tether_session *s);
TETHER_API const char *tether_state_name(tether_state st);

typedef struct tether_stats {
  uint64_t bytes_sent;      /* written by the application */
  uint64_t bytes_received;  /* delivered to the application */
  uint64_t bytes_resent;    /* sent again after reconnects */
  uint64_t bytes_retained;  /* held now for a possible resend */
  uint64_t reconnects;      /* successful resumes */
  uint64_t suspended_ns;    /* total time suspended */
  uint64_t reserved[6];
} tether_stats;

TETHER_API int tether_session_stats(const tether_session *s,
                                    tether_stats *out);

/* ---- Snapshots --------------------------------------------------------- */

/* The complete state of the context -- every listener's address, every
 * session's id, keys, counters and retained bytes -- as one self-checking
 * blob (magic, format version, SHA-256) in *blob (release with free(3)).
 * It holds session keys: store it where only this user can read it. */
TETHER_API int tether_snapshot(tether_ctx *ctx, void **blob, size_t *len);
/* tether_snapshot() without the bytes a durable context's sessions retain
 * for their peers: each such session is captured as if it had written only
 * up to the 1 KiB boundary at or below the first byte it retains (its peer
 * has everything before).  After a restore, tether_session_stats()'s
 * bytes_sent says where: the application writes again, identically (the
 * peer checks), everything from there.  For applications that can
 * regenerate what they wrote (a file sender), whose snapshots then stay
 * small however much their peers have not yet committed. */
TETHER_API int tether_snapshot_lean(tether_ctx *ctx, void **blob, size_t *len);
/* tether_checkpoint() through a file store at path (tether_store_file_new):
 * after a crash at any point, path holds either the previous snapshot or
 * this one; once the file is durable the snapshot is committed. */
TETHER_API int tether_snapshot_save(tether_ctx *ctx, const char *path);
/* The blob from tether_snapshot is durable now (the application stored it,
 * say inside its own state file, and synced it): the counters it captured
 * are reported to each session's peer, which may then drop what it covers.
 * Call it only for the latest blob, after it is safely stored.  Returns 0,
 * or TETHER_EPROTO for a blob that is not a snapshot of this context. */
TETHER_API int tether_snapshot_commit(tether_ctx *ctx, const void *blob,
                                      size_t len);
/* A new context (configured by cfg, as tether_ctx_new) with the snapshot's
 * listeners bound again to their addresses and its sessions back, suspended:
 * the connecting side redials, the accepting side waits for it.  A damaged,
 * truncated or foreign blob fails with TETHER_EPROTO, another format version
 * with TETHER_EVERSION. */
TETHER_API int tether_restore(const tether_config *cfg, const void *blob,
                              size_t len, tether_ctx **out);
/* tether_restore_store() of a file store at path. */
TETHER_API int tether_restore_file(const tether_config *cfg, const char *path,
                                   tether_ctx **out);
/* ---- Stores ------------------------------------------------------------ */

/* Where checkpoints go: tether_store_file_new() (a file, the default) or an
 * application's own store (tether_store_new) built from three callbacks.
 * Each returns 0 or a negative code (-errno or TETHER_E*), which tether
 * passes back unchanged.  Calls on one store are serialized: tether holds
 * the store's lock around them (never a context or session lock), in the
 * thread that called tether_checkpoint*() or tether_restore_store().  A
 * callback may call any tether function except those on the same store. */
typedef struct tether_store tether_store;

typedef struct tether_store_ops {
  /* Keeps blob (len bytes, tether's buffer: valid only during the call) as
   * the next snapshot, not yet the one load() returns.  Required. */
  int (*save)(void *arg, const void *blob, size_t len);
  /* Makes the blob of the last save() the one load() returns, durably:
   * after 0, a crash at any point leaves load() returning it.  Returns
   * TETHER_STORE_PENDING when it will be durable later: the application
   * then calls tether_snapshot_commit() with that blob once it is.  A
   * failure must leave load() returning the previous snapshot.  NULL when
   * save() alone makes the blob durable and current. */
  int (*commit)(void *arg);
  /* The last committed blob, in a buffer allocated with malloc(3) (tether
   * wipes and frees it), or -ENOENT when the store holds none.  Required. */
  int (*load)(void *arg, void **blob, size_t *len);
} tether_store_ops;

/* commit() and tether_checkpoint(): stored, durable later. */
#define TETHER_STORE_PENDING 1

/* A store over the application's callbacks (copied) and arg. */
TETHER_API int tether_store_new(const tether_store_ops *ops, void *arg,
                                tether_store **out);
/* The built-in store: one file at path, replaced atomically (a new
 * temporary file in the same directory, mode 0600, fsync; commit renames it
 * over path and fsyncs the directory).  The file need not exist yet. */
TETHER_API int tether_store_file_new(const char *path, tether_store **out);
TETHER_API void tether_store_free(tether_store *st);
/* tether_snapshot(), then save and commit through st; once committed, the
 * snapshot is reported durable to the peers (tether_snapshot_commit).
 * Returns 0, TETHER_STORE_PENDING (stored; the application commits later),
 * or a negative code: then nothing was committed and the store still holds
 * its previous snapshot. */
TETHER_API int tether_checkpoint(tether_ctx *ctx, tether_store *st);
/* The same for a blob the application took earlier with tether_snapshot()
 * (say, at a point where its own state was quiet); blobs of one context
 * must be stored in the order they were taken. */
TETHER_API int tether_checkpoint_blob(tether_ctx *ctx, tether_store *st,
                                      const void *blob, size_t len);
/* tether_restore() of the store's last committed snapshot; -ENOENT when it
 * holds none. */
TETHER_API int tether_restore_store(const tether_config *cfg, tether_store *st,
                                    tether_ctx **out);

/* The context's sessions that the application holds (connected or accepted,
 * not closed), up to cap of them in out; returns how many there are.  After
 * a restore, this is how the application gets its sessions back. */
TETHER_API size_t tether_ctx_sessions(tether_ctx *ctx, tether_session **out,
                                      size_t cap);
/* Likewise for the context's open listeners. */
TETHER_API size_t tether_ctx_listeners(tether_ctx *ctx, tether_listener **out,
                                       size_t cap);
/* How many bytes of this session's stream its peer had received, as of the
 * last resume or acknowledgement.  After a restore it tells the application
 * where its peer is: bytes written again below it are checked and dropped
 * (never delivered twice; different bytes fail both sides with
 * TETHER_EDIVERGED).  -EAGAIN while a restored session has not resumed. */
TETHER_API int tether_session_peer_received(const tether_session *s,
                                            uint64_t *out);
/* The session's 16-byte id, the same on both sides and across restores. */
TETHER_API int tether_session_id(const tether_session *s, uint8_t id[16]);

/* ---- On the application's event loop ----------------------------------- */

/* tether can run on a libevent event_base that the application runs itself:
 * no engine thread, and one descriptor per session (its TCP socket).  Bytes
 * move through two evbuffers per session, as with a bufferevent: the
 * application takes what arrived from the input buffer and adds what it
 * writes to the output buffer; callbacks say when to look.  See
 * tether_config_set_event_base(3) and tether_session_setcb(3). */
struct event_base;
struct evbuffer;

/* Contexts made with cfg (tether_ctx_new, tether_restore*) run their
 * timers, side channel, listeners, handshakes and resumes as events on base,
 * for as long as the application runs base; NULL (the default): on an
 * engine thread of their own.  Every call on such a context, its listeners
 * and its sessions must come from the thread that runs base (a blocking call
 * blocks that loop; a blocking tether_read would wait for resumes only the
 * loop can make: use the callbacks, or non-blocking calls).
 * tether_ctx_free() runs base itself while closed sessions deliver their
 * last bytes (TETHER_OPT_LINGER_S), must not be called from a callback of
 * base, and leaves base to the application, which frees it after. */
TETHER_API void tether_config_set_event_base(tether_config *cfg,
                                             struct event_base *base);

typedef enum tether_event {
  TETHER_EVENT_SUSPENDED = 1, /* transport lost; reconnecting */
  TETHER_EVENT_CONNECTED,     /* resumed: bytes flow again */
  TETHER_EVENT_EOF,           /* the peer finished writing: the input
                                 buffer holds its last byte */
  TETHER_EVENT_CLOSED,        /* both directions finished */
  TETHER_EVENT_FAILED,        /* final; err says why */
  TETHER_EVENT_WRITE_FAILED,  /* writing failed (err: -EPIPE once the peer
                                 closed): the output buffer was emptied,
                                 and later additions are dropped; reading
                                 goes on */
} tether_event;

#define TETHER_EV_READ 0x02  /* the same values as libevent's EV_READ */
#define TETHER_EV_WRITE 0x04 /* and EV_WRITE */

/* Callbacks of a session on the application's loop.  They run on that loop
 * with no tether lock held and may call any tether function, tether_close()
 * included, except tether_ctx_free(). */
typedef void (*tether_data_cb)(tether_session *s, void *arg);
typedef void (*tether_event_cb)(tether_session *s, tether_event ev, int err,
                                void *arg);
/* A connect finished: s set up (err 0), or NULL and the error. */
typedef void (*tether_connect_cb)(tether_session *s, int err, void *arg);
typedef void (*tether_accept_cb)(tether_listener *l, tether_session *s,
                                 void *arg);

/* Starts connecting to host:port on a context on the application's loop;
 * cb is called once, from the loop, bounded by TETHER_OPT_CONNECT_TIMEOUT_MS
 * (addresses are tried in turn).  A host name is resolved at once, with
 * getaddrinfo(3): numeric addresses never block.  Returns 0, or a negative
 * code (and cb is not called). */
TETHER_API int tether_connect_async(tether_ctx *ctx, const char *host,
                                    const char *port, tether_connect_cb cb,
                                    void *arg);
/* New sessions of a listener of a context on the application's loop go to cb
 * (on the loop) instead of tether_accept(); a session cb does not want it
 * closes.  cb NULL: back to tether_accept(). */
TETHER_API int tether_listener_set_accept_cb(tether_listener *l,
                                             tether_accept_cb cb, void *arg);
/* Sets the callbacks of a session from tether_connect_async() or an accept
 * callback (any may be NULL); a session of a restored context on the
 * application's loop (tether_ctx_sessions) becomes such a session by it.  readcb: the input buffer holds at least the
 * read low watermark (default 0: any byte).  writecb: the output buffer
 * drained to its low watermark (default 0: empty) -- all written, held by
 * tether for the peer.  eventcb: the session changed state or reached EOF. */
TETHER_API int tether_session_setcb(tether_session *s, tether_data_cb readcb,
                                    tether_data_cb writecb,
                                    tether_event_cb eventcb, void *arg);
/* The session's buffers (owned by it; valid until tether_close()).  Bytes
 * in the input buffer are the application's; bytes added to the output
 * buffer are written in order, as the session can take them. */
TETHER_API struct evbuffer *tether_session_input(tether_session *s);
TETHER_API struct evbuffer *tether_session_output(tether_session *s);
/* Starts or stops reading into the input buffer (TETHER_EV_READ) or
 * writing from the output buffer (TETHER_EV_WRITE); both are on at first. */
TETHER_API int tether_session_enable(tether_session *s, short events);
TETHER_API int tether_session_disable(tether_session *s, short events);
/* Watermarks, as a bufferevent's.  TETHER_EV_READ: readcb waits for `low`
 * bytes; reading stops while the input buffer holds `high` or more (0: no
 * limit; default 256 KiB: a peer that writes faster than the application
 * reads is held back by TCP, not buffered without end).  TETHER_EV_WRITE:
 * writecb fires when the output buffer drains to `low`; high is unused. */
TETHER_API int tether_session_setwatermark(tether_session *s, short events,
                                           size_t low, size_t high);

#ifdef __cplusplus
}
#endif
#endif /* TETHER_TETHER_H */
