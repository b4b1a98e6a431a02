#!/usr/bin/env bash
# partition.sh with only TCP dropped: the side channel's heartbeats still
# arrive, so the session must notice that its bytes are not acknowledged.
PARTITION_PROTO=tcp exec bash "$(dirname "$0")/partition.sh"
