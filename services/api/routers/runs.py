"""Training runs (researcher): start (a job on the Redis queue), status with live progress, logs,
metrics, artifacts and loss curves, cancel."""

from __future__ import annotations

import uuid
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse, PlainTextResponse
from rq import Retry
from rq.job import Job
from sqlalchemy import select

from services import worker
from services.api.context import AppContext, ctx, now_ns, principal, require
from services.api.schemas import Id, RunCreate, RunOut, Text
from services.auth import Principal
from services.control.models import PolicyVersion, TrainingRun

router = APIRouter(prefix="/v1/runs", tags=["training runs"])


def _out(r: TrainingRun) -> dict:
    return {k: getattr(r, k) for k in RunOut.model_fields}


def _get(s, run_id: str) -> TrainingRun:
    r = s.get(TrainingRun, run_id)
    if r is None:
        raise HTTPException(404, f"no training run {run_id!r}")
    return r


@router.post("", response_model=RunOut, status_code=202, summary="Start a training run (queued for a worker)")
def start_run(body: RunCreate, p: Principal = Depends(require("runs.start")), c: AppContext = Depends(ctx)):
    query = body.selection.query()
    if not c.catalog.episodes(**query, limit=1):
        raise HTTPException(422, f"the selection {query} matches no episode")
    run_id = f"run-{uuid.uuid4().hex[:10]}"
    with c.db.session() as s:
        if body.parent_version and s.get(PolicyVersion, body.parent_version) is None:
            raise HTTPException(422, f"unknown parent version {body.parent_version!r}")
        spec = body.model_dump(mode="json")
        spec["selection"] = query
        run = TrainingRun(id=run_id, spec=spec, status="queued", created_at_ns=now_ns(), created_by=p.name, metrics={})
        s.add(run)
        s.flush()
        out = _out(run)
    c.queue.enqueue(worker.train, run_id, job_id=run_id, job_timeout=worker.JOB_TIMEOUT_S,
                    retry=Retry(max=worker.RETRIES), result_ttl=7 * 24 * 3600, failure_ttl=30 * 24 * 3600,
                    description=f"training run {run_id} ({body.method})")
    return out


@router.get("", response_model=list[RunOut], summary="Training runs, newest first")
def list_runs(status: Text | None = Query(None, max_length=16), limit: int = Query(100, ge=1, le=10_000),
              _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        q = select(TrainingRun).order_by(TrainingRun.created_at_ns.desc()).limit(limit)
        if status:
            q = q.where(TrainingRun.status == status)
        return [_out(r) for r in s.scalars(q).all()]


@router.get("/{run_id}", response_model=RunOut, summary="Status, phase, progress and metrics")
def get_run(run_id: Id, _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        return _out(_get(s, run_id))


@router.post("/{run_id}/cancel", response_model=RunOut, summary="Cancel a queued or running training run")
def cancel_run(run_id: Id, _: Principal = Depends(require("runs.cancel")), c: AppContext = Depends(ctx)):
    with c.db.session() as s:
        run = _get(s, run_id)
        if run.status in ("finished", "failed", "cancelled"):
            raise HTTPException(409, f"run {run_id} is {run.status}")
        run.cancel_requested = True
        if run.status == "queued":  # not started: take it off the queue
            try:
                Job.fetch(run_id, connection=c.redis).cancel()
            except Exception:  # already picked up: the worker sees cancel_requested
                pass
            else:
                run.status, run.finished_at_ns = "cancelled", now_ns()
        return _out(run)


def _run_dir(c: AppContext, run_id: str) -> Path:
    with c.db.session() as s:
        _get(s, run_id)
    return Path(c.settings.runs_dir) / run_id


@router.get("/{run_id}/logs", response_class=PlainTextResponse, summary="The worker's log of this run")
def run_logs(run_id: Id, tail: int = Query(200, ge=1, le=100_000), _: Principal = Depends(principal),
             c: AppContext = Depends(ctx)):
    f = _run_dir(c, run_id) / "worker.log"
    if not f.exists():
        return ""
    return "\n".join(f.read_text(errors="replace").splitlines()[-tail:])


@router.get("/{run_id}/artifacts", summary="Files the run wrote (relative paths and sizes)")
def run_artifacts(run_id: Id, _: Principal = Depends(principal), c: AppContext = Depends(ctx)) -> list[dict]:
    d = _run_dir(c, run_id)
    if not d.exists():
        return []
    return [{"path": str(p.relative_to(d)), "bytes": p.stat().st_size}
            for p in sorted(d.rglob("*")) if p.is_file() and "checkpoints" not in p.parts]


@router.get("/{run_id}/curves.png", response_class=FileResponse, summary="Loss curves",
            responses={200: {"content": {"image/png": {}}}})
def run_curves(run_id: Id, _: Principal = Depends(principal), c: AppContext = Depends(ctx)):
    f = _run_dir(c, run_id) / "curves.png"
    if not f.exists():
        raise HTTPException(404, f"run {run_id} has no loss curves yet")
    return FileResponse(f, media_type="image/png")


@router.get("/{run_id}/scalars", summary="The run's TensorBoard scalars: loss curves by step and its metrics")
def run_scalars(run_id: Id, max_points: int = Query(400, ge=2, le=100_000), _: Principal = Depends(principal),
                c: AppContext = Depends(ctx)) -> dict[str, list[list[float]]]:
    """tag -> [[step, value], ...] from the event files the run wrote (training/tracking.py); {} until
    it has written some. `tensorboard --logdir <RECAP_HOME>/runs` shows the same."""
    from training.tracking import read_run_scalars  # torch-free

    return read_run_scalars(_run_dir(c, run_id), max_points=max_points)
