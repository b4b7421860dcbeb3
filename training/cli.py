"""`recap train ...`: fit value functions and policies on catalog selections; run sim rounds."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from enum import Enum
from typing import Optional, get_args

import typer
from rich.console import Console

from data.cli import CatalogOpt, StoreOpt, open_store
from data.cli_errors import UserError
from data.home import default_runs_dir, default_store
from training.recap_config import PositiveCap

app = typer.Typer(help="Training: value function, advantage-conditioned policy, RECAP rounds (and the baselines).",
                  no_args_is_help=True)
console = Console()
log = logging.getLogger(__name__)

RunsOpt = typer.Option(None, "--runs-dir", envvar="RECAP_RUNS", show_default=False,
                       help="Where training runs are written [default: $RECAP_HOME/runs].")
METHODS = "bc | hg_dagger | filtered_bc | awr | recap"
PositiveCapChoice = Enum("PositiveCapChoice", {v: v for v in get_args(PositiveCap)}, type=str)  # typer's choice type
PositiveCapOpt = typer.Option(
    "none", "--positive-cap",
    help="Cap each task's positive share where the policy rarely succeeds: at the success rate of its episodes "
         "(success_rate) or the share of its ticks in successful ones (success_share); none = the fixed share.")


def _method(name: str):
    from training.methods import Method

    try:
        return Method(name)
    except ValueError:
        raise typer.BadParameter(f"unknown method {name!r}; one of {METHODS}", param_hint="--method") from None


def _task_limits(values: list[str]) -> dict[str, int]:
    """`TASK=L` options -> {task: L}."""
    out = {}
    for v in values:
        task, _, n = v.partition("=")
        if not task or not n.isdigit() or int(n) <= 0:
            raise typer.BadParameter(f"{v!r} is not TASK=L with L a positive number of steps", param_hint="--max-len")
        out[task] = int(n)
    return out


def _selected(cat, selection: dict) -> list:
    rows = cat.episodes(**selection)
    if not rows:
        raise UserError(f"no episode matches the selection {json.dumps(selection)}")
    return rows


def _selection(robot, task, outcome, policy_version) -> dict:
    sel = {}
    if robot:
        sel["robot"] = robot
    if task:
        sel["task"] = task
    if outcome:
        sel["outcome"] = outcome
    if policy_version:
        sel["policy_version"] = policy_version
    return sel


@app.command("policy")
def policy_cmd(
    method: str = typer.Option("recap", help=METHODS),
    run_id: Optional[str] = typer.Option(None, help="Run id (default: method and time). Same id resumes."),
    robot: list[str] = typer.Option([], "--robot", help="Select episodes of these robots."),
    task: list[str] = typer.Option([], "--task", help="Select episodes of these tasks."),
    outcome: list[str] = typer.Option([], "--outcome", help="Select episodes with these outcomes."),
    policy_version: list[str] = typer.Option([], "--policy-version", help="Select episodes in which this version acted."),
    first_fit: bool = typer.Option(False, help="Demonstrations-only first fit: indicator fixed to positive."),
    first_labelled: bool = typer.Option(False, help="The first advantage-labelled fit after the first fit: 30% of the "
                                        "policy's ticks labelled positive (later fits: --positive-fraction)."),
    horizon: int = typer.Option(50, min=1, help="N-step advantage horizon (control steps)."),
    positive_fraction: float = typer.Option(0.4, min=0.0, max=1.0, help="Target share of positive indicators per task."),
    positive_cap: PositiveCapChoice = PositiveCapOpt,
    value_steps: int = typer.Option(1500, min=1, help="Value function training steps."),
    policy_steps: int = typer.Option(2500, min=1, help="Policy training steps."),
    hidden: int = typer.Option(256, min=1, help="Hidden width of both networks."),
    chunk: int = typer.Option(8, min=1, help="Action chunk length H."),
    select_chunks: int = typer.Option(0, min=0, max=64, help="Value-guided chunk selection: train a chunk critic and "
                                      "execute the best of K sampled chunks (0: off)."),
    max_len: list[str] = typer.Option([], "--max-len", help="TASK=L: the task's episode time limit (default: longest seen)."),
    camera: list[str] = typer.Option([], "--camera", help="Cameras to condition on (default: state only)."),
    parent: Optional[str] = typer.Option(None, help="Parent policy version (lineage)."),
    seed: int = typer.Option(0, help="Random seed."), device: str = typer.Option("cpu", help="cpu | cuda[:N]"),
    store: Optional[Path] = StoreOpt, catalog: Optional[str] = CatalogOpt, runs_dir: Optional[Path] = RunsOpt,
) -> None:
    """A training run: select episodes, fit V and advantage labels if the method needs them, fit the
    policy, write a verified artifact with lineage. Prints the run's config first."""
    from training.recap import RecapConfig
    from training.runs import RunSpec, run_training

    kind = _method(method)
    limits = _task_limits(max_len)
    st, cat = open_store(store, catalog)
    selection = _selection(robot, task, outcome, policy_version)
    _selected(cat, selection)
    spec = RunSpec(run_id=run_id or f"{method}-{time.strftime('%Y%m%dT%H%M%S')}", method=kind,
                   selection=selection, first_fit=first_fit, first_labelled=first_labelled,
                   recap=RecapConfig(advantage_horizon=horizon, positive_fraction_later=positive_fraction,
                                     positive_fraction_cap=positive_cap.value, select_chunks=select_chunks),
                   value={"steps": value_steps, "hidden": hidden},
                   policy={"steps": policy_steps, "hidden": hidden, "chunk": chunk},
                   task_max_len=limits,
                   cameras=list(camera), parent_version=parent, seed=seed, device=device)
    console.print_json(json.dumps(spec.to_dict()))
    res = run_training(st, cat, spec, runs_dir or default_runs_dir())
    console.print(f"policy artifact: {res.policy_dir}")
    console.print_json(json.dumps(res.metrics))


@app.command("value")
def value_cmd(
    out: Path = typer.Argument(..., help="Directory for the value artifact, labels and calibration plot."),
    robot: list[str] = typer.Option([], "--robot", help="Select episodes of these robots."),
    task: list[str] = typer.Option([], "--task", help="Select episodes of these tasks."),
    held_out: float = typer.Option(0.2, min=0.0, max=0.9, help="Share of episodes held out for the calibration report."),
    steps: int = typer.Option(1500, min=1, help="Training steps."), hidden: int = typer.Option(256, min=1, help="Hidden width."),
    seed: int = typer.Option(0, help="Random seed."),
    horizon: int = typer.Option(50, min=1, help="N-step advantage horizon (control steps)."),
    positive_fraction: float = typer.Option(0.4, min=0.0, max=1.0, help="Target share of positive indicators per task."),
    positive_cap: PositiveCapChoice = PositiveCapOpt,
    store: Optional[Path] = StoreOpt, catalog: Optional[str] = CatalogOpt,
) -> None:
    """Fit the value function on a selection (minus held-out episodes), label advantages, and report
    calibration (predicted vs realised return) on the held-out episodes as JSON and a plot."""
    import numpy as np

    from training.advantages import label_advantages
    from training.artifacts import write_artifact
    from training.calibration import calibration_report, plot_calibration
    from training.steps import load_steps
    from training.value import ValueConfig
    from training.value.trainer_value import (fit_value, held_out_members, normalised_return_targets, predict_values,
                                             task_max_lengths)

    st, cat = open_store(store, catalog)
    ids = [r.id for r in _selected(cat, _selection(robot, task, [], []))]
    if len(ids) < 2:
        raise UserError(f"the selection holds {len(ids)} episode; a held-out calibration needs at least 2")
    rng = np.random.default_rng(seed)
    test = set(rng.choice(ids, size=max(1, int(len(ids) * held_out)), replace=False).tolist())
    train_ids = [i for i in ids if i not in test]
    table, held = load_steps(st, train_ids), load_steps(st, sorted(test))
    max_len = task_max_lengths(table)
    for t, n in task_max_lengths(held).items():
        max_len[t] = max(max_len.get(t, 0), n)
    cfg = ValueConfig(state_dim=table.state.shape[1], hidden=hidden, steps=steps, seed=seed)
    console.print_json(json.dumps(cfg.to_dict()))
    vf, sstats, losses = fit_value(table, cfg, max_len=max_len)
    out.mkdir(parents=True, exist_ok=True)
    pred = predict_values(vf, held, sstats, max_len=max_len)
    real, known = normalised_return_targets(held, max_len, None)
    report = calibration_report(pred[known], real[known])
    plot_calibration(pred[known], real[known], report, out / "calibration.png")
    (out / "calibration.json").write_text(json.dumps(report, indent=1))
    write_artifact(out / "value", kind="value", model=vf, config=cfg.to_dict(), stats={"observation.state": sstats},
                   lineage={"episodes": train_ids, "held_out": sorted(test)}, metrics={"calibration": report})
    oof = held_out_members(vf, table, seed)  # labels from the members that never saw the episode
    labels = label_advantages(table, predict_values(vf, table, sstats, max_len=max_len, held_out=oof), max_len=max_len, horizon=horizon,
                              positive_fraction=positive_fraction, cap=positive_cap.value)
    labels.save(out / "labels")
    console.print(f"held-out calibration: corr {report['corr']:.3f}, MAE {report['mae']:.3f} on {report['ticks']} ticks "
                  f"-> {out / 'calibration.png'}")


@app.command("round")
def round_cmd(
    workdir: Path = typer.Argument(..., help="Directory for the simulated loop's store, catalog and runs."),
    method: str = typer.Option("recap", help=METHODS + " | recap_cfg"),
    tasks: str = typer.Option("push-v3", help="Comma-separated Meta-World tasks."),
    rounds: int = typer.Option(1, min=0, help="RECAP rounds after the first fit."),
    seed: int = typer.Option(0, help="Random seed."),
    demos: int = typer.Option(6, min=1, help="Demonstrations per task."),
    episodes: int = typer.Option(8, min=1, help="Episodes per task per round."),
    eval_episodes: int = typer.Option(10, min=1, help="Evaluation episodes per task."),
    steps: int = typer.Option(600, min=2, help="Policy training steps."),
) -> None:
    """RECAP rounds on the simulated arm: demonstrations -> first fit -> (collect with corrections ->
    train -> evaluate) x rounds, through the real store, catalog and training runs."""
    from training.sim.arm import unknown_tasks
    from training.sim.loop import METHODS as SIM_METHODS, LoopConfig, SimLoop

    if method not in SIM_METHODS:
        raise typer.BadParameter(f"unknown method {method!r}; one of {' | '.join(SIM_METHODS)}", param_hint="--method")
    unknown = unknown_tasks(tasks.split(","))
    if unknown:
        raise typer.BadParameter(f"unknown Meta-World task {unknown[0]!r} (e.g. push-v3, pick-place-v3)", param_hint="--tasks")

    cfg = LoopConfig(tasks=tasks.split(","), demos_per_task=demos, episodes_per_round=episodes, rounds=rounds,
                     eval_episodes=eval_episodes, value={"steps": steps // 2, "hidden": 128},
                     policy={"steps": steps, "hidden": 128, "chunk": 8})
    console.print_json(json.dumps(cfg.to_dict()))
    loop = SimLoop(cfg, workdir, progress=True, say=console.print)
    p0 = loop.round0(seed)
    console.print(f"round 0 policy: {p0}")
    for rec in loop.run(method, seed, p0):
        console.print(f"round {rec['round']}: {json.dumps(rec['eval']['all'])}")


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="A training run directory (with labels/)."),
    out: Path = typer.Argument(..., help="Directory for the LeRobot v3 dataset (must not exist or be empty)."),
    videos: bool = typer.Option(True, "--videos/--images", help="Cameras as MP4 video or PNG frames."),
    store: Optional[Path] = StoreOpt,
) -> None:
    """Export the run's episodes as a LeRobot v3 dataset with its advantage labels as extra columns
    (`advantage`, `advantage_indicator`), so LeRobot's tools can train and visualise them."""
    import numpy as np

    from data.lerobot_io import ExportVerificationError, export_lerobot
    from data.store import EpisodeStore
    from training.advantages import AdvantageLabels

    if not (run_dir / "labels" / "advantages.json").exists():
        raise UserError(f"{run_dir} has no advantage labels (its method needs none, or it is not finished)")
    st = EpisodeStore(store or default_store(), create=False)
    labels = AdvantageLabels.load(run_dir / "labels")
    adv = {k: np.nan_to_num(v, nan=0.0) for k, v in labels.per_episode("advantages").items()}
    ind = {k: v.astype(np.float32) for k, v in labels.per_episode("indicators").items()}
    try:
        export_lerobot(st, labels.episode_ids, out, use_videos=videos,
                       extra_columns={"advantage": adv, "advantage_indicator": ind})
    except ExportVerificationError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    console.print(f"exported {len(labels.episode_ids)} episodes with advantage labels to {out}")
