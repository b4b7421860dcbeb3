"""Publishing the serving state after a change (deployments, robots, robot tokens)."""

from __future__ import annotations

import logging

import redis

from services.api.context import AppContext
from services.registry import serving_state
from services.serving_channel import publish_state

log = logging.getLogger(__name__)


def publish_serving_state(c: AppContext) -> int | None:
    """The database change is committed before this runs; if Redis is down the change stands and the
    next publish (or a server's start, which reads the stored state) carries it."""
    with c.db.session() as s:
        state = serving_state(s)
    try:
        return publish_state(c.redis, c.settings.channel, state)
    except redis.RedisError as e:
        log.error("could not publish the serving state: %s", e)
        return None
