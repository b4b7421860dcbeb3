"""Experiment tracking for researchers: every training run also writes TensorBoard event files
(`<run dir>/tensorboard/`: one scalar series per loss curve, `<curve>/loss` by step, and the run's
scalar metrics), so `tensorboard --logdir <RECAP_HOME>/runs` compares runs as LeRobot users expect.
The API reads them back (`GET /v1/runs/<id>/scalars`) for the dashboard's curves.

Weights & Biases, when a user configures it (`pip install '.[wandb]'`; the environment of the
process that trains, i.e. the worker or `recap train`): RECAP_WANDB_PROJECT turns it on,
RECAP_WANDB_ENTITY picks the team, RECAP_WANDB_MODE (or wandb's own WANDB_MODE) `online` or
`offline`. The same series go there (`<curve>/loss` against `<curve>/step`, the scalar metrics in
the run's summary, the run's spec as its config), under `<run dir>/wandb/`; offline needs no
network (`wandb sync <run dir>/wandb/offline-run-*` uploads it later). A tracker that fails does
not fail the run: the run's metrics say so (`wandb.error`)."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

log = logging.getLogger(__name__)

EVENTS_DIR = "tensorboard"
WANDB_MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbSettings:
    """Weights & Biases for training runs, from the environment: off unless a project is named."""

    project: str | None = None
    entity: str | None = None
    mode: str | None = None  # online | offline | disabled; None: wandb's default (WANDB_MODE, else online)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "WandbSettings":
        mode = (env.get("RECAP_WANDB_MODE") or env.get("WANDB_MODE") or "").strip().lower() or None
        if mode is not None and mode not in WANDB_MODES:
            raise ValueError(f"RECAP_WANDB_MODE / WANDB_MODE {mode!r}: one of {', '.join(WANDB_MODES)}")
        return cls(project=(env.get("RECAP_WANDB_PROJECT") or "").strip() or None,
                   entity=(env.get("RECAP_WANDB_ENTITY") or "").strip() or None, mode=mode)

    @property
    def enabled(self) -> bool:
        return bool(self.project) and self.mode != "disabled"

    def check(self) -> None:
        """At a run's start: configured, then importable (or the run stops before it trains, saying how)."""
        if not self.enabled:
            return
        try:
            import wandb  # noqa: F401
        except ImportError as e:
            raise RuntimeError(f"RECAP_WANDB_PROJECT={self.project} is set but wandb is not installed "
                               f"(pip install '.[wandb]'): {e}") from None

    def describe(self) -> str:
        if not self.enabled:
            return "off (RECAP_WANDB_PROJECT unset)"
        return f"project {self.project}" + (f", entity {self.entity}" if self.entity else "") + f", mode {self.mode or 'online'}"


def track_run(run_dir: Path, run_id: str, curves: dict[str, list[float]], metrics: dict, config: dict,
              wandb_settings: WandbSettings | None = None) -> dict:
    """Every tracker of a finished run: TensorBoard always, W&B when configured; what the metrics keep
    of it (`{"wandb": {...}}` or {})."""
    write_run_events(run_dir, curves, metrics)
    settings = wandb_settings if wandb_settings is not None else WandbSettings.from_env()
    if not settings.enabled:
        return {}
    try:
        return {"wandb": log_wandb_run(run_dir, run_id, curves, metrics, config, settings)}
    except Exception as e:  # an unreachable tracker must not cost the trained policy
        log.warning("run %s: W&B logging failed (%s); TensorBoard events are in %s", run_id, e, Path(run_dir) / EVENTS_DIR)
        return {"wandb": {"project": settings.project, "error": f"{type(e).__name__}: {e}"[:300]}}


def _scalars(metrics: dict) -> dict[str, float]:
    return {f"metrics/{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_wandb_run(run_dir: Path, run_id: str, curves: dict[str, list[float]], metrics: dict, config: dict,
                  settings: WandbSettings) -> dict:
    """One W&B run per training run, named after it, files under `<run dir>/wandb/`."""
    import wandb

    out = Path(run_dir)
    run = wandb.init(project=settings.project, entity=settings.entity, mode=settings.mode, dir=str(out), name=run_id,
                     config=config, job_type="training", tags=[str(config.get("method", ""))[:64] or "run"],
                     reinit="create_new",
                     settings=wandb.Settings(silent=True, console="off", save_code=False, disable_git=True,
                                             x_disable_stats=True, x_disable_machine_info=True))
    try:
        for name, ys in curves.items():
            run.define_metric(f"{name}/step")
            run.define_metric(f"{name}/*", step_metric=f"{name}/step")
            for step, y in enumerate(ys):
                if math.isfinite(float(y)):
                    run.log({f"{name}/step": step, f"{name}/loss": float(y)})
        scalars = _scalars(metrics)
        for k, v in scalars.items():
            run.summary[k] = v
        where = Path(run.dir).parent  # <run dir>/wandb/<offline-run-...|run-...>
        info = {"project": settings.project, "id": run.id, "mode": settings.mode or "online",
                "dir": str(where.relative_to(out)) if where.is_relative_to(out) else str(where)}
        if settings.mode != "offline" and run.url:
            info["url"] = run.url
    finally:
        run.finish()
    return info


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
