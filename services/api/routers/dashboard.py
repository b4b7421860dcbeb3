"""The dashboard: one HTML page with its script and style sheet (no external assets: robots'
networks are often closed) reading the same API with the viewer's token, and the per-version
statistics it plots. The page's script builds the DOM from text only (static/dashboard.js); the
gate's Content-Security-Policy allows no inline script."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from data.effort import effort_figures
from services.api.context import AppContext, ctx, principal
from services.auth import Principal

router = APIRouter(tags=["dashboard"])
STATIC = Path(__file__).resolve().parents[1] / "static"  # served at /static
PAGE = STATIC / "dashboard.html"
RESET_S = 2.0  # robot time charged per episode for the throughput figure (as in the benchmarks)


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def page() -> str:
    return PAGE.read_text()


@router.get("/review", response_class=HTMLResponse, include_in_schema=False)
def review_page() -> str:
    """Episode review: scrub an episode, its frames, plots, who acted, the runs' labels; label it."""
    return (STATIC / "review.html").read_text()


@router.get("/v1/stats/versions", summary="Per policy version: success rate, throughput, corrections, over time")
def version_stats(bucket_s: int = Query(3600, ge=1, le=30 * 86400), _: Principal = Depends(principal),
                  c: AppContext = Depends(ctx)) -> dict:
    """Each episode counts for every version that produced actions in it (normally one; a swap
    mid-episode makes two); episodes without policy ticks (demonstrations) are left out."""
    per = defaultdict(lambda: {"episodes": 0, "successes": 0, "labelled": 0, "robot_s": 0.0, "ticks": 0,
                               "correction_ticks": 0, "series": defaultdict(lambda: [0, 0, 0.0])})
    for e in c.catalog.episodes():
        if e.num_policy_ticks == 0:
            continue
        dur = max(e.end_time_ns - e.start_time_ns, 0) / 1e9 + RESET_S
        for vid in e.policy_versions:
            _count(per[vid], e, dur, bucket_s)
    return {vid: _summary(v) for vid, v in per.items()}


def _count(v: dict, e, dur: float, bucket_s: int) -> None:
    v["episodes"] += 1
    v["ticks"] += e.num_ticks
    v["correction_ticks"] += e.num_correction_ticks
    v["robot_s"] += dur
    b = v["series"][e.start_time_ns // (bucket_s * 10**9) * bucket_s]
    if e.outcome != "unknown":
        v["labelled"] += 1
        b[1] += 1
    if e.outcome == "success":
        v["successes"] += 1
        b[0] += 1
    b[2] += dur


def _summary(v: dict) -> dict:
    return {
        "episodes": v["episodes"],
        "success_rate": v["successes"] / v["labelled"] if v["labelled"] else None,
        "throughput_per_h": v["successes"] / v["robot_s"] * 3600 if v["robot_s"] else 0.0,
        "correction_rate": v["correction_ticks"] / v["ticks"] if v["ticks"] else 0.0,
        "series": [{"t": t, "success_rate": s / n if n else None, "throughput_per_h": s / d * 3600 if d else 0.0}
                   for t, (s, n, d) in sorted(v["series"].items())],
    }


@router.get("/v1/stats/effort", summary="Human effort per robot and per policy version: takeovers per robot-hour, "
                                       "correction share, return on human effort, mistake to takeover")
def effort_stats(since_ns: int | None = Query(None, ge=0, le=2**63 - 1), _: Principal = Depends(principal),
                 c: AppContext = Depends(ctx)) -> dict:
    """data/effort.py over the episodes a policy drove (demonstrations left out), evaluation episodes
    included: `by_robot`, and `by_version` (an episode counts for every version that acted in it).
    Return on human effort = successes / (1 + minutes of correction), as Fleet-DAgger defines it.
    Mistake to takeover (mean, median; `takeovers_mistake_known` of the takeovers): where known, i.e.
    recorded by the teleoperator station or marked on the review page; null when none is."""
    robots, versions = defaultdict(list), defaultdict(list)
    for e in c.catalog.episodes(since_ns=since_ns):
        if e.num_policy_ticks == 0:
            continue
        eff = e.effort()
        robots[e.robot_id].append(eff)
        for v in e.policy_versions:
            versions[v].append(eff)
    return {"by_robot": {k: effort_figures(v).as_dict() for k, v in sorted(robots.items())},
            "by_version": {k: effort_figures(v).as_dict() for k, v in sorted(versions.items())}}
