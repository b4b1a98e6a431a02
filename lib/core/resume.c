/* The resume verdict, shared by both sides of a resume handshake. */
#include "session.h"

#include "tether/tether.h"

/* Each side resends [peer's delivered, its sent) from retention, so the
 * peer's delivered count must lie within what this side still holds -- and
 * the same the other way round.  A side restored from a snapshot may have
 * forgotten bytes its peer already delivered (peer delivered > our sent);
 * replaying them is not supported yet, so that is refused as well rather
 * than delivered twice. */
int core_resume_check(const struct core_resume_state *ours, const struct core_resume_state *peer) {
  if (peer->delivered < ours->retained_from || peer->delivered > ours->sent)
    return TETHER_EWINDOW;
  if (ours->delivered < peer->retained_from || ours->delivered > peer->sent)
    return TETHER_EWINDOW;
  return 0;
}
