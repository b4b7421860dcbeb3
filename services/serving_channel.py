"""The deployment channel between the control plane and the inference servers (Redis).

The serving state is read from the control database with the serving sequence number (and the
database's epoch) it was read at (services/control/serving_sequence.py); Redis only carries it.
The document (services/registry.py `serving_state`): "robots" (robot -> version), "fleet_version",
"betas" (robot -> its deployment's guidance β override, null for the artifact's), "fleet_beta",
"versions" (version -> artifact_dir, manifest_sha256, policy_type), "robot_tokens", "seq", "epoch".

Invariants:
- The stored state (STATE_KEY) and its stamp (STAMP_KEY, "<epoch> <seq>") change together, in one
  script, and only to a state with a higher number than the stored one (or from another epoch: a
  new database): an older read published late can never overwrite a newer one.
- A state is announced on the channel only when it was stored, so every announcement is the
  newest state at that moment; a server that misses one finds the state under STATE_KEY.
"""

from __future__ import annotations

import json

import redis

STATE_KEY = "recap:serving_state"
STAMP_KEY = "recap:serving_stamp"

# KEYS: state, stamp; ARGV: epoch, seq, document, channel. 1 if stored and announced, 0 if not newer.
_STORE_IF_NEWER = """
local stamp = redis.call('GET', KEYS[2])
if stamp then
  local epoch, seq = string.match(stamp, '^(%S+) (%d+)$')
  if epoch == ARGV[1] and tonumber(seq) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. ARGV[2])
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""


def publish_state(r: redis.Redis, channel: str, state: dict) -> bool:
    """Store and announce `state` (which carries "epoch" and "seq") if it is newer than the stored
    one; False if a newer or the same state is there already."""
    store = r.register_script(_STORE_IF_NEWER)
    return bool(store(keys=[STATE_KEY, STAMP_KEY], args=[state["epoch"], int(state["seq"]), json.dumps(state), channel]))


def read_state(r: redis.Redis) -> dict | None:
    raw = r.get(STATE_KEY)
    return json.loads(raw) if raw else None


def read_stamp(r: redis.Redis) -> tuple[str, int] | None:
    """(epoch, seq) of the stored state: one short GET, for the reconciling polls."""
    raw = r.get(STAMP_KEY)
    if not raw:
        return None
    epoch, seq = raw.decode().split(" ")
    return epoch, int(seq)
