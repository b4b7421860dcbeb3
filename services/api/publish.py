"""Publishing the serving state after a change (deployments, robots, robot tokens), and keeping the
stored state in step with the control database.

Invariants:
- A change is committed (with its serving sequence number) before anything is published; the
  database is the truth and Redis a copy that may lag but never goes back (services/serving_channel.py).
- A publish reads the state in its own transaction under the sequence lock, so the document and its
  number agree; an older read published late is refused by Redis.
- Whatever was lost (Redis down during a change, a crash between commit and publish), the
  `StateReconciler` of every API process re-publishes from the database within `RECONCILE_S` of the
  stored stamp falling behind the database's.
"""

from __future__ import annotations

import logging
import threading

import redis

from services.api.context import AppContext
from services.control import serving_sequence
from services.registry import serving_state
from services.serving_channel import publish_state, read_stamp

log = logging.getLogger(__name__)

RECONCILE_S = 1.0  # how often each API process compares the stored stamp with the database


def publish_serving_state(c: AppContext) -> int | None:
    """Publish the state as committed now; its sequence number, or None if Redis is unreachable
    (the change stands, and the reconciler publishes it once Redis answers)."""
    with c.db.session() as s:
        state = serving_state(s)
    try:
        publish_state(c.redis, c.settings.channel, state)
    except redis.RedisError as e:
        log.error("could not publish the serving state %d: %s", state["seq"], e)
        return None
    return state["seq"]


def reconcile(c: AppContext) -> bool:
    """Publish from the database if the stored state is behind it (or from another epoch); True if
    a publish was needed."""
    with c.db.session() as s:
        epoch, seq = serving_sequence.current(s)
    stored = read_stamp(c.redis)
    if stored is not None and stored[0] == epoch and stored[1] >= seq:
        return False
    publish_serving_state(c)
    return True


class StateReconciler:
    """A thread that runs `reconcile` every `interval_s` until stopped."""

    def __init__(self, c: AppContext, interval_s: float = RECONCILE_S):
        self.c, self.interval_s = c, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="serving-reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval_s):
            try:
                if reconcile(self.c):
                    log.info("serving state re-published from the database")
                failing = False
            except Exception as e:  # Redis or the database away: say so once, keep trying
                if not failing:
                    log.warning("serving state reconciliation failed, retrying every %.1f s: %s", self.interval_s, e)
                failing = True
