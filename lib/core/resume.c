/* The resume verdict and arithmetic, shared by both sides of a resume
 * handshake: each side computes them from the same two states. */
#include "session.h"

#include "tether/tether.h"

/* Normally the sender resends exactly what the receiver lacks.  A sender
 * that rolled back to a snapshot has forgotten bytes the receiver already
 * delivered: it resends from the chunk boundary below its write position,
 * and the receiver checks those bytes, and the ones the application writes
 * again, against its replay log instead of delivering them. */
uint64_t core_resume_from(const struct core_resume_state *tx, const struct core_resume_state *rx) {
  return rx->delivered <= tx->sent ? rx->delivered : replay_align(tx->sent);
}

static int direction_check(const struct core_resume_state *tx, const struct core_resume_state *rx) {
  uint64_t from = core_resume_from(tx, rx);
  if (from < tx->retained_from)
    return TETHER_EWINDOW; /* the sender no longer holds what is needed */
  if (from < rx->delivered && from < rx->verify_from)
    return TETHER_EWINDOW; /* a replay the receiver cannot check */
  return 0;
}

/* A writer's stream has one end: once shut down at E it may not end below
 * what its reader delivered, nor, after a rollback, anywhere but at the E
 * its reader knows of (a replay that ends elsewhere is a divergent one). */
static bool end_diverged(const struct core_resume_state *tx, const struct core_resume_state *rx) {
  if (tx->write_closed && tx->sent < rx->delivered)
    return true;
  if (!rx->peer_wr_closed)
    return false;
  return tx->sent > rx->peer_wr_end || (tx->write_closed && tx->sent != rx->peer_wr_end);
}

int core_resume_check(const struct core_resume_state *ours, const struct core_resume_state *peer) {
  if (end_diverged(peer, ours) || end_diverged(ours, peer))
    return TETHER_EDIVERGED;
  int rc = direction_check(ours, peer);
  return rc < 0 ? rc : direction_check(peer, ours);
}
