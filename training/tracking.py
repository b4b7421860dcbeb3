"""Experiment tracking for researchers: every training run also writes TensorBoard event files
(`<run dir>/tensorboard/`: one scalar series per loss curve, `<curve>/loss` by step, and the run's
scalar metrics), so `tensorboard --logdir <RECAP_HOME>/runs` compares runs as LeRobot users expect.
The API reads them back (`GET /v1/runs/<id>/scalars`) for the dashboard's curves."""

from __future__ import annotations

import math
from pathlib import Path

EVENTS_DIR = "tensorboard"


def write_run_events(run_dir: Path, curves: dict[str, list[float]], metrics: dict) -> Path:
    """Write the run's loss curves and scalar metrics as TensorBoard events; the directory."""
    from torch.utils.tensorboard import SummaryWriter

    out = Path(run_dir) / EVENTS_DIR
    with SummaryWriter(log_dir=str(out)) as w:
        for name, ys in curves.items():
            for step, y in enumerate(ys):
                if math.isfinite(float(y)):
                    w.add_scalar(f"{name}/loss", float(y), step)
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                w.add_scalar(f"metrics/{key}", float(value), 0)
    return out


def read_run_scalars(run_dir: Path, max_points: int = 400) -> dict[str, list[list[float]]]:
    """tag -> [[step, value], ...] (evenly thinned to at most `max_points`) from a run's event files;
    empty when the run has written none (yet). Torch-free: the API calls it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    d = Path(run_dir) / EVENTS_DIR
    if not d.is_dir():
        return {}
    acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        events = acc.Scalars(tag)
        k = max(1, math.ceil(len(events) / max_points))
        out[tag] = [[e.step, e.value] for e in events[::k]]
    return out
