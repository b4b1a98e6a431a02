/* Control datagrams applied to a session: by the engine, or -- when a
 * writer holds tx_lock in send() -- handed over to that writer, so that the
 * engine never waits on the data path. */
#include <string.h>
#include <sys/socket.h>

#include <event2/event.h>

#include "engine.h"

/* Both locks held: what an authenticated datagram says.  False if it was a
 * replay (ignored). */
static bool apply_ctl_locked(struct tether_session *s, const struct core_ctl *ctl,
                             const struct sockaddr *from, socklen_t fromlen, uint64_t now) {
  bool reply;
  if (core_on_ctl(&s->core, now, ctl, &reply) != 0)
    return false;
  /* The server answers wherever the client's authenticated datagrams come
   * from: NAT rebinding and address changes need no handshake.  (The
   * session moves to that address's path at its next settle.) */
  if (!s->is_client && fromlen <= sizeof(s->udp_peer)) {
    memcpy(&s->udp_peer, from, fromlen);
    s->udp_peer_len = fromlen;
  }
  if (reply)
    udp_send_ctl(s, now);
  /* The peer's close is known and every byte of it delivered: a reader
   * asleep in recv() (recv_transport) returns end of stream now, not when
   * the FIN comes.  Nothing is left to read on this socket but the FIN. */
  if (s->reader_in_recv && s->sock >= 0 && core_at_eof(&s->core))
    (void)shutdown(s->sock, SHUT_RD);
  return true;
}

/* Both locks held: applies a datagram that waited for a writer. */
void session_apply_deferred_locked(struct tether_session *s) {
  if (!s->ctl_deferred)
    return;
  __atomic_store_n(&s->ctl_deferred, false, __ATOMIC_RELAXED);
  apply_ctl_locked(s, &s->deferred.ctl, (struct sockaddr *)&s->deferred.from,
                   s->deferred.fromlen, now_ns());
}

/* Writer thread, tx_lock held, after a write: applies a datagram the
 * engine left for it, if the reading side is free (else the engine does,
 * kicked).  The engine is kicked when the datagram changed the state. */
void session_writer_takes_deferred(struct tether_session *s) {
  if (pthread_mutex_trylock(&s->rx_lock) != 0) {
    session_kick(s);
    return;
  }
  enum core_state before = s->core.state;
  session_apply_deferred_locked(s);
  bool changed = s->core.state != before;
  pthread_mutex_unlock(&s->rx_lock);
  if (changed)
    session_kick(s);
}

void session_on_ctl(struct tether_session *s, const struct core_ctl *ctl,
                    const struct ctl_path *path, const struct sockaddr *from, socklen_t fromlen) {
  char tag[17];
  LOG_DEBUG(s->ctx, "session %s: control #%llu: delivered %llu sent %llu%s%s%s%s%s",
            session_tag(s->id, tag), (unsigned long long)ctl->seq,
            (unsigned long long)ctl->delivered, (unsigned long long)ctl->sent,
            ctl->write_closed ? " write-closed" : "", ctl->read_closed ? " read-closed" : "",
            ctl->ack_write_closed ? " ack-write" : "", ctl->ack_read_closed ? " ack-read" : "",
            path->buckets ? " path" : "");
  pthread_mutex_lock(&s->rx_lock);
  if (pthread_mutex_trylock(&s->tx_lock) != 0) {
    /* A writer is in send(): waiting would stall the engine, and have the
     * writer wake it after each of its writes while it holds on.  Control
     * messages are cumulative: keep the latest for the writer to apply. */
    bool fresh = ctl->seq > s->core.rx_seq && (!s->ctl_deferred || ctl->seq > s->deferred.ctl.seq);
    if (fresh) {
      s->deferred.ctl = *ctl;
      s->deferred.fromlen = fromlen <= sizeof(s->deferred.from) ? fromlen : 0;
      memcpy(&s->deferred.from, from, s->deferred.fromlen);
      __atomic_store_n(&s->ctl_deferred, true, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&s->rx_lock);
    /* ... or the engine itself, should the writer be gone by then.  Each
     * datagram deferred pushes this back: a writer that keeps writing
     * applies them all, and the engine sleeps meanwhile. */
    session_timer_soon(s, CTL_DEFER_NS);
    if (fresh && path->buckets) /* the engine's own business: now */
      path_on_beat(s, path, from, fromlen);
    return;
  }
  session_apply_deferred_locked(s); /* an older one first: it may still count */
  if (apply_ctl_locked(s, ctl, from, fromlen, now_ns()) && path->buckets)
    path_on_beat(s, path, from, fromlen);
  session_settle_unlock(s);
}
