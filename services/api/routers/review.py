"""Episode review (the dashboard's review page, `/review`): an episode tick by tick (states, actions,
who acted, the policy version, the deadline holds), the advantage labels (and values, where a run
saved them) every training run gave it, and the stretches marked on it. Marking a stretch as a
bad correction (teleoperator, operator; audited like every mutation) leaves those ticks out of later
training runs, with the reason in the catalog and the runs' lineage. Marking the tick where the
policy went wrong (kind `mistake`, same roles) stretches to the takeover that followed it: the
mistake-to-takeover time where the station did not record it (data/effort.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, HTTPException
from pydantic import Field
from sqlalchemy import select

from data.effort import takeover_after
from data.schema import ActionSource
from data.store import EpisodeNotFound, StoreError
from services.api.context import AppContext, ctx, principal, require
from services.api.schemas import LongText, Strict
from services.auth import Principal
from services.control.models import TrainingRun

router = APIRouter(prefix="/v1/episodes", tags=["episode review"])


class AnnotationIn(Strict):
    kind: str = Field("bad_correction", pattern=r"^(bad_correction|mistake)$")
    start_tick: int = Field(ge=0, le=10**9)
    end_tick: int | None = Field(None, ge=0, le=10**9, description="bad_correction: the stretch's last tick; "
                                 "mistake: left out (the takeover that follows start_tick)")
    reason: LongText = Field(min_length=1)


def _open(c: AppContext, episode_id: str):
    try:
        return c.store.open(episode_id)
    except (EpisodeNotFound, StoreError, ValueError) as e:
        raise HTTPException(404, f"no committed episode {episode_id!r}: {e}") from e


def _finite(a: np.ndarray) -> list:
    """JSON has no NaN: non-finite values (an unknown outcome's advantages) become null."""
    a = np.asarray(a, dtype=np.float64)
    return [None if not np.isfinite(x) else round(float(x), 5) for x in a.ravel()] if a.ndim == 1 else \
        [_finite(row) for row in a]


@router.get("/{episode_id}/ticks", summary="An episode tick by tick: states, actions, who acted, the policy version")
def ticks(episode_id: str, _: Principal = Depends(principal), c: AppContext = Depends(ctx)) -> dict:
    ep = _open(c, episode_id)
    n = len(ep)
    ts = ep.timestamps_ns
    return {"id": episode_id, "num_ticks": n, "fps": ep.info.fps, "cameras": ep.cameras,
            "t_s": _finite((ts - ts[0]) / 1e9 if n else ts),
            "state": _finite(ep.state), "action": _finite(ep.action),
            "source": [int(x) for x in ep.action_source],
            "source_names": {int(s): s.name.lower() for s in ActionSource},
            "policy_version": [ep.policy_version(t) for t in range(n)]}


@router.get("/{episode_id}/labels", summary="The advantage labels (and values) every training run gave this episode")
def labels(episode_id: str, _: Principal = Depends(principal), c: AppContext = Depends(ctx)) -> list[dict]:
    from safetensors.numpy import load_file  # numpy only: the API stays torch-free

    _open(c, episode_id)
    with c.db.session() as s:
        runs = [(r.id, r.version_id, r.spec.get("method"), r.created_at_ns)
                for r in s.scalars(select(TrainingRun).order_by(TrainingRun.created_at_ns)).all()]
    out = []
    for run_id, version, method, _at in runs:
        d = Path(c.settings.runs_dir) / run_id / "labels"
        try:
            meta = json.loads((d / "advantages.json").read_text())
        except (OSError, ValueError):
            continue
        ids = meta.get("episode_ids", [])
        if episode_id not in ids:
            continue
        arrays = load_file(str(d / "advantages.safetensors"))
        lengths = arrays["lengths"].astype(np.int64)
        i = ids.index(episode_id)
        start, stop = int(lengths[:i].sum()), int(lengths[: i + 1].sum())
        out.append({"run_id": run_id, "version_id": version, "method": method, "horizon": meta.get("horizon"),
                    "thresholds": meta.get("thresholds", {}),
                    "advantages": _finite(arrays["advantages"][start:stop]),
                    "indicators": [bool(x) for x in arrays["indicators"][start:stop]],
                    "values": _finite(arrays["values"][start:stop]) if "values" in arrays else None})
    return out


@router.get("/{episode_id}/annotations", summary="Stretches reviewers marked, with their reasons")
def annotations(episode_id: str, _: Principal = Depends(principal), c: AppContext = Depends(ctx)) -> list[dict]:
    return c.catalog.annotations([episode_id]).get(episode_id, [])


@router.post("/{episode_id}/annotations", status_code=201,
             summary="Mark a stretch as a bad correction (its ticks are left out of later training runs), or the "
                     "tick of a policy mistake (to the takeover that followed it)")
def annotate(episode_id: str, body: AnnotationIn, p: Principal = Depends(require("episodes.label")),
             c: AppContext = Depends(ctx)) -> dict:
    end = body.end_tick
    if body.kind == "mistake":
        ep = _open(c, episode_id)
        if body.start_tick >= len(ep):
            raise HTTPException(422, f"tick {body.start_tick}: outside the episode's 0..{len(ep) - 1}")
        end = takeover_after(ep.action_source, body.start_tick)
        if end is None:
            raise HTTPException(422, f"no takeover follows tick {body.start_tick}: a mistake is marked before the "
                                     "takeover that answered it")
    elif end is None:
        raise HTTPException(422, "end_tick: a bad correction needs the stretch's last tick")
    if end < body.start_tick:
        raise HTTPException(422, f"end_tick {end} is before start_tick {body.start_tick}")
    try:
        return c.catalog.annotate(episode_id, body.kind, body.start_tick, end, body.reason, author=p.name)
    except KeyError:
        raise HTTPException(404, f"episode {episode_id!r} is not in the catalog") from None
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
