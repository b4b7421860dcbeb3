"""The deployment channel between the control plane and the inference servers (Redis): the whole
serving state is stored under one key and published on a channel, each copy numbered from one
Redis counter so a server never goes back to an older state."""

from __future__ import annotations

import json

import redis

STATE_KEY = "recap:serving_state"
SEQ_KEY = "recap:serving_seq"


def publish_state(r: redis.Redis, channel: str, state: dict) -> int:
    """Number, store and announce `state`; a lock keeps two publishers from storing out of order."""
    with r.lock("recap:serving_lock", timeout=10, blocking_timeout=10):
        seq = int(r.incr(SEQ_KEY))
        doc = json.dumps({**state, "seq": seq})
        with r.pipeline() as p:
            p.set(STATE_KEY, doc)
            p.publish(channel, doc)
            p.execute()
    return seq


def read_state(r: redis.Redis) -> dict | None:
    raw = r.get(STATE_KEY)
    return json.loads(raw) if raw else None
