"""Probe: LeRobot exports under CPU load, through `recap data export` (in process). Each export
selects one small synthetic episode with two cameras (one of them dotted) while busy processes load
every core; afterwards the rows and the decoded video frames of every export are counted, and a few
exports are imported back and compared field by field."""

from __future__ import annotations

import os
from pathlib import Path

from typer.testing import CliRunner

from data.catalog import Catalog
from data.lerobot_io import count_video_frames, import_lerobot
from data.store import EpisodeStore
from tests.store.generators import T0, BusyLoops, labelled_episode, round_trip_differences

EXPORTS = 20
TICKS = 60
ROUND_TRIPS = 3


def _count(root: Path) -> tuple[int, int]:
    """(rows, frames short of the rows, summed over cameras) of one written export."""
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in (root / "data").rglob("*.parquet"))
    short = 0
    videos = root / "videos"
    for cam_dir in (videos.iterdir() if videos.is_dir() else []):
        short += rows - sum(count_video_frames(f) for f in cam_dir.rglob("*.mp4"))
    return rows, short


def run(stack, work: Path) -> dict:
    from data.cli import app

    work.mkdir(parents=True, exist_ok=True)
    store = EpisodeStore(work / "store")
    cat = Catalog.for_store(store)
    episodes = []
    for i in range(EXPORTS):
        ep = labelled_episode(store, ticks=TICKS, robot=f"arm-{i:02d}", start=T0 + i * 10**12, seed=i)
        cat.register(ep)
        episodes.append(ep)
    cat.close()
    runner = CliRunner()
    failed, dropped, lost, outs = 0, 0, 0, []
    with BusyLoops(max(2, os.cpu_count() or 2)):
        for i, ep in enumerate(episodes):
            out = work / f"export-{i:02d}"
            res = runner.invoke(app, ["export", str(out), "--store", str(store.root), "--robot", ep.info.robot_id])
            failed += res.exit_code != 0
            outs.append(out)
    for ep, out in zip(episodes, outs):
        if (out / "meta" / "info.json").exists():
            rows, short = _count(out)
            dropped += (len(ep) - rows) * len(ep.cameras) + short
        else:
            dropped += len(ep) * len(ep.cameras)
    back = EpisodeStore(work / "imported")
    for ep, out in list(zip(episodes, outs))[:ROUND_TRIPS]:
        [eid] = import_lerobot(out, back, keep_labels=True)
        lost += len(round_trip_differences(ep, back.open(eid)))
    return {"exports_under_load": EXPORTS, "exports_failed": failed, "frames_dropped": dropped,
            "export_roundtrips_checked": ROUND_TRIPS, "export_roundtrip_fields_lost": lost}
