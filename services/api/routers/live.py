"""The live fleet view as server-sent events (`GET /v1/live`, `text/event-stream`): which version each
robot runs by its own reports (and which it should), the episode each robot is recording now, and the
training runs in progress with their phase and progress. A `fleet` event is sent at once and then
whenever that picture changes (looked at every `interval_s`), a comment line every 15 s keeps proxies
from closing the stream; the stream ends after `max_s` (the client reconnects), so a server can shut
down with no stream left open for long. The bearer token travels in the header as everywhere: the
dashboard reads the stream with fetch(), not EventSource (which cannot send headers). Query: `interval_s`
(0.2..60, default 1), `max_s` (1..3600, default 300)."""

from __future__ import annotations

import asyncio
import json
import os
import time

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from data.store import JOURNAL
from services.api.context import AppContext, ctx, principal
from services.auth import Principal
from services.control.models import Robot, TrainingRun
from services.registry import assignments

router = APIRouter(prefix="/v1/live", tags=["live"])
RECORDING_S = 30.0  # an in-flight episode whose journal moved within this long is being recorded now
KEEPALIVE_S = 15.0


def _recording(c: AppContext) -> dict[str, dict]:
    """robot -> the episode it is recording now (id, ticks flushed so far)."""
    now = time.time()
    out = {}
    for eid in c.store.in_flight_ids():
        journal = c.store.episode_dir(eid) / JOURNAL
        try:
            if now - os.stat(journal).st_mtime > RECORDING_S:
                continue  # left behind by a crash: fsck's business, not a live episode
            ticks = int(json.loads(journal.read_text()).get("flushed_ticks", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            continue
        robot = eid[16:-7]  # <yyyymmddThhmmss>-<robot>-<6 hex>
        if robot and (robot not in out or out[robot]["episode_id"] < eid):
            out[robot] = {"episode_id": eid, "ticks": ticks}
    return out


def snapshot(c: AppContext) -> dict:
    recording = _recording(c)
    with c.db.session() as s:
        assigned = assignments(s)
        robots = [{"id": r.id, "group": r.group, "reported_version": r.reported_version,
                   "assigned_version": assigned.get(r.id), "last_seen_ns": r.last_seen_ns,
                   "recording": recording.get(r.id)} for r in s.scalars(select(Robot).order_by(Robot.id)).all()]
        runs = [{"id": r.id, "method": r.spec.get("method"), "status": r.status, "phase": r.phase,
                 "progress": r.progress, "version_id": r.version_id}
                for r in s.scalars(select(TrainingRun).where(TrainingRun.status.in_(("queued", "running")))
                                   .order_by(TrainingRun.created_at_ns)).all()]
    return {"robots": robots, "runs": runs}


@router.get("", include_in_schema=False)  # a stream, not a document: described here and in services/README.md
async def live(request: Request, interval_s: float = Query(1.0, ge=0.2, le=60.0),
               max_s: float = Query(300.0, ge=1.0, le=3600.0), _: Principal = Depends(principal),
               c: AppContext = Depends(ctx)):
    async def events():
        last, last_sent, end = None, time.monotonic(), time.monotonic() + max_s
        while time.monotonic() < end and not await request.is_disconnected():
            state = await run_in_threadpool(snapshot, c)
            # last_seen moves with every heartbeat: a change of what robots run or do is what counts
            key = json.dumps({**state, "robots": [{k: v for k, v in r.items() if k != "last_seen_ns"}
                                                  for r in state["robots"]]}, sort_keys=True)
            if key != last:
                last, last_sent = key, time.monotonic()
                yield f"event: fleet\ndata: {json.dumps({**state, 'at_ns': time.time_ns()})}\n\n"
            elif time.monotonic() - last_sent > KEEPALIVE_S:
                last_sent = time.monotonic()
                yield ": keep-alive\n\n"
            await asyncio.sleep(interval_s)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
