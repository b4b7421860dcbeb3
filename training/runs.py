"""A training run: data selection (a catalog query) -> value function -> advantage labels ->
advantage-conditioned policy -> artifacts. It records exactly which episodes it used (ids and
checksums), resumes from its last finished phase, and is deterministic for a seed.

Run directory:
    run.json            the spec, printed at the start too
    episodes.json       the selection and every episode used, with its checksum
    value/              value-function artifact (when the method needs one)
    labels/             advantage labels (when the method needs them)
    policy/             the policy artifact: what gets registered and deployed (with the chunk critic,
                        critic.*, when recap.select_chunks > 1: value-guided chunk selection)
    curves.png          loss curves
    done.json           written last

Degenerate episodes in the selection (too short, inconsistent lengths, non-finite values,
unreadable) are left out and listed with the reason under "excluded" in episodes.json, the
metrics and the policy's lineage; a run stops (TrainingDataError, naming the episodes) only when
nothing usable is left. A stretch a reviewer marked as a bad correction leaves only its ticks out
of the policy's training (never a sample, never a target inside another tick's action chunk; the
value function still sees the whole episode, whose return is what happened): listed with who
marked it and why under "masked" in episodes.json, the metrics and the lineage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from data.catalog import Catalog
from data.schema import ActionSource
from data.store import EpisodeStore
from training.advantages import AdvantageLabels, label_advantages
from training import distributed
from training.artifacts import load_artifact, write_artifact
from training.methods import Method, policy_data
from training.policies.policy import Policy, load_policy as load_registered_policy
from training.policies.registry import policy_config
from training.policies.trainer_policy import fit_policy
from training.calibration import correlations
from training.fit import scaled_steps
from training.recap import RecapConfig, positive_rate_by_outcome, positive_rate_by_position, positives_by_source
from training.recipe import check_selection, effective_recipe
from training.steps import load_steps
from training.tracking import WandbSettings, track_run
from training.value import ValueConfig, build_value_function
from training.value.trainer_value import (fit_value, held_out_members, normalised_return_targets, predict_values,
                                         task_max_lengths)

log = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """The selection leaves nothing to train on; the message names the episodes and why."""


class WeakValueError(TrainingDataError):
    """The value function's held-out correlation is below the recipe's bar: the run stops before
    labelling (its advantages would be noise)."""


def _listing(reasons: dict[str, str], limit: int = 10) -> str:
    items = [f"{eid}: {why}" for eid, why in list(reasons.items())[:limit]]
    more = len(reasons) - limit
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")


@dataclass
class RunSpec:
    run_id: str
    method: Method = Method.RECAP
    selection: dict[str, Any] = field(default_factory=dict)  # Catalog.episodes(**selection)
    first_fit: bool = False  # demonstrations-only first fit: indicator fixed to positive
    # the first advantage-labelled fit after the first fit: recap.positive_fraction_first, later ones _later
    first_labelled: bool = False
    recap: RecapConfig = field(default_factory=RecapConfig)
    value: dict[str, Any] = field(default_factory=dict)  # ValueConfig overrides
    policy: dict[str, Any] = field(default_factory=dict)  # {"type": a registered policy type, its config's overrides}
    task_max_len: dict[str, int] = field(default_factory=dict)  # L_l; default: longest episode seen
    cameras: list[str] = field(default_factory=list)
    parent_version: str | None = None
    seed: int = 0
    device: str = "cpu"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["method"] = str(self.method)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        d = dict(d)
        d["method"] = Method(d.get("method", "recap"))
        d["recap"] = RecapConfig(**d.get("recap", {}))
        return cls(**d)


@dataclass
class RunResult:
    run_dir: Path
    policy_dir: Path
    manifest: dict
    metrics: dict


def _selection_digest(ids: list[str], checksums: list[str]) -> str:
    h = hashlib.sha256()
    for i, c in zip(ids, checksums):
        h.update(f"{i}\t{c}\n".encode())
    return h.hexdigest()


def _plot_curves(path: Path, curves: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.2), squeeze=False)
    for ax, (name, ys) in zip(axes[0], curves.items()):
        ys = np.asarray(ys)
        k = max(1, len(ys) // 100)
        smooth = np.convolve(ys, np.ones(k) / k, mode="valid") if len(ys) >= k else ys
        ax.plot(ys, alpha=0.3)
        ax.plot(np.arange(len(smooth)) + k - 1, smooth)
        ax.set_title(f"{name} loss")
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run_training(store: EpisodeStore, catalog: Catalog, spec: RunSpec, runs_dir: str | Path, *,
                 progress: bool = True, on_progress: Callable[[str, float], None] | None = None) -> RunResult:
    """`on_progress(phase, fraction)`: phases "value" and "policy" with their fraction done (a
    service streams it; raising from it stops the run, which resumes from its checkpoints)."""
    def stepper(phase: str):
        return (lambda done, total: on_progress(phase, done / max(total, 1))) if on_progress else None

    check_selection(spec.policy, asdict(spec.recap))
    run_dir = Path(runs_dir) / spec.run_id
    spec_path = run_dir / "run.json"
    distributed.init(spec.device)
    main = distributed.is_main()
    wandb_settings = WandbSettings.from_env()
    if main:
        wandb_settings.check()  # under torchrun / accelerate only rank 0 writes; the others read after a barrier
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if spec_path.exists() and json.loads(spec_path.read_text()) != spec.to_dict():
            raise ValueError(f"run {spec.run_id} exists with a different spec; use a new run id")
        spec_path.write_text(json.dumps(spec.to_dict(), indent=1))
        log.info("training run %s: %s", spec.run_id, json.dumps(spec.to_dict()))
        log.info("run %s: recipe with defaults %s", spec.run_id,
                 json.dumps(effective_recipe(spec.policy, spec.value, asdict(spec.recap))))
        log.info("run %s: tracking: TensorBoard in %s; W&B %s", spec.run_id, run_dir / "tensorboard",
                 wandb_settings.describe())
    distributed.barrier()
    if (run_dir / "done.json").exists():
        manifest = load_artifact(run_dir / "policy")[0]
        return RunResult(run_dir, run_dir / "policy", manifest, json.loads((run_dir / "done.json").read_text()))

    # 1. data selection, frozen on first start so a resumed run trains on the same episodes
    sel_path = run_dir / "episodes.json"
    if not main:
        distributed.barrier()
    if sel_path.exists():
        sel = json.loads(sel_path.read_text())
    else:
        chosen = catalog.select_for_training(store, **spec.selection)
        if chosen.excluded:
            log.warning("run %s: %d degenerate episodes left out: %s", spec.run_id, len(chosen.excluded),
                        _listing(chosen.excluded))
        if not chosen.records:
            if chosen.excluded:
                raise TrainingDataError(f"the selection {spec.selection} has no usable episode: "
                                        + _listing(chosen.excluded))
            raise TrainingDataError(f"the selection {spec.selection} matches no episode")
        records = chosen.records
        sel = {"selection": spec.selection, "episodes": [r.id for r in records],
               "checksums": [r.checksum for r in records], "excluded": chosen.excluded, "masked": chosen.masked}
        if chosen.masked:
            log.info("run %s: stretches marked as bad corrections left out of the policy's training: %s", spec.run_id,
                     _listing({e: "; ".join(m["why"] for m in ms) for e, ms in chosen.masked.items()}))
        sel["digest"] = _selection_digest(sel["episodes"], sel["checksums"])
        sel_path.write_text(json.dumps(sel, indent=1))
    if main:
        distributed.barrier()
    for eid, checksum in zip(sel["episodes"], sel["checksums"]):
        if store.open(eid).checksum != checksum:
            raise ValueError(f"episode {eid} changed since the run selected it")
    excluded, masked = sel.get("excluded", {}), sel.get("masked", {})
    table = load_steps(store, sel["episodes"], cameras=spec.cameras, masked=masked)
    if spec.method.needs_value and not spec.first_fit and all(o == "unknown" for o in table.outcomes):
        raise TrainingDataError("no episode of the selection has a known outcome to fit the value function on: "
                                + _listing({e: "outcome unknown" for e in table.episode_ids}))
    max_len = task_max_lengths(table, spec.task_max_len)
    feats = store.open(sel["episodes"][0]).info.features
    image_size = (feats.cameras[spec.cameras[0]].height, feats.cameras[spec.cameras[0]].width) if spec.cameras else (64, 64)
    metrics: dict[str, Any] = {"episodes": table.num_episodes, "ticks": len(table), "world_size": distributed.world(),
                               "unknown_outcome_episodes": sum(o == "unknown" for o in table.outcomes),
                               "excluded": excluded, "masked": masked, "masked_ticks": int(table.masked.sum())}
    curves: dict[str, list[float]] = {}

    # 2. value function and advantage labels (RECAP / AWR after the first fit)
    labels = None
    if spec.method.needs_value and not spec.first_fit:
        vsection = dict(spec.value)
        returns, known = normalised_return_targets(table, max_len, spec.recap.c_fail)
        base = ValueConfig(state_dim=feats.state_dim, cameras=list(spec.cameras), image_size=image_size,
                           num_bins=spec.recap.num_bins, seed=spec.seed, **vsection)
        vsection["steps"] = scaled_steps(base.steps, spec.recap.value_epochs, int(known.sum()), base.batch_size)
        vcfg = ValueConfig(state_dim=feats.state_dim, cameras=list(spec.cameras), image_size=image_size,
                           num_bins=spec.recap.num_bins, seed=spec.seed, **vsection)
        metrics["value_steps"] = vcfg.steps
        vdir = run_dir / "value"
        if vdir.exists():  # a resumed run: the value function and its loss curve as the first attempt saved them
            vmanifest, _, state, vstats = load_artifact(vdir)
            vf = build_value_function(vcfg)
            vf.load_state_dict(state)
            sstats = vstats["observation.state"]
            curves["value"] = [float("nan") if y is None else float(y)
                               for y in vmanifest.get("metrics", {}).get("losses", [])]
        else:
            vf, sstats, vlosses = fit_value(table, vcfg, max_len=max_len, c_fail=spec.recap.c_fail,
                                            device=spec.device, progress=progress,
                                            checkpoint_dir=run_dir / "checkpoints" / "value", on_step=stepper("value"))
            curves["value"] = vlosses
            if main:
                write_artifact(vdir, kind="value", model=vf, config=vcfg.to_dict(), stats={"observation.state": sstats},
                               lineage={"run": spec.run_id, "selection_digest": sel["digest"]},
                               metrics={"final_loss": float(np.mean(vlosses[-50:])), "losses": [float(x) for x in vlosses]})
        # held-out calibration: each tick's out-of-fold V (members that never saw its episode) against the
        # realised return; the guard-rail reads it before anything is labelled
        held_out = held_out_members(vf, table, vcfg.seed)
        values = predict_values(vf, table, sstats, max_len=max_len, device=spec.device, held_out=held_out)
        calib = correlations(values[known], returns[known]) if held_out is not None else {}
        metrics["value_calibration"] = {"held_out": held_out is not None, **calib}
        guard = None
        rho = calib.get("spearman", float("nan"))
        if held_out is not None and spec.recap.min_value_corr > -1 and not rho >= spec.recap.min_value_corr:
            why = (f"the value function's held-out Spearman correlation with the realised returns is {rho:.3f}, "
                   f"below recap.min_value_corr {spec.recap.min_value_corr:g} ({calib.get('ticks', 0)} ticks of "
                   f"{table.num_episodes} episodes): its advantages would label noise")
            if spec.recap.on_weak_value == "stop":
                raise WeakValueError(f"run {spec.run_id} stopped before labelling: {why}. Collect more episodes, "
                                     "fit V longer, or set recap.on_weak_value=filtered_bc to fall back")
            guard = {"fallback": str(Method.FILTERED_BC), "reason": why}
            log.warning("run %s: %s; training success-filtered BC instead (recap.on_weak_value)", spec.run_id, why)
        metrics["value_guard"] = guard or {"passed": held_out is not None, "min_value_corr": spec.recap.min_value_corr}
        ldir = run_dir / "labels"
        fraction = spec.recap.positive_fraction_first if spec.first_labelled else spec.recap.positive_fraction_later
        if (ldir / "advantages.json").exists():
            labels = AdvantageLabels.load(ldir)
        else:
            labels = label_advantages(table, values, max_len=max_len, horizon=spec.recap.advantage_horizon,
                                      positive_fraction=fraction, c_fail=spec.recap.c_fail,
                                      cap=spec.recap.positive_fraction_cap)
            if main:
                labels.save(ldir)
        distributed.barrier()
        per_ep = labels.per_episode()
        ind_list = [per_ep[e] for e in table.episode_ids]
        policy_ticks = table.source == ActionSource.POLICY
        metrics["positive_fraction_target"] = fraction
        metrics["positive_fraction_by_task"] = labels.fractions or dict.fromkeys(labels.thresholds, fraction)
        metrics["positive_rate"] = float(labels.indicators.mean())
        metrics["positive_rate_policy_ticks"] = (float(labels.indicators[policy_ticks].mean())
                                                 if policy_ticks.any() else float("nan"))
        metrics["positive_rate_by_outcome"] = positive_rate_by_outcome(ind_list, table.outcomes)
        metrics["positives_by_source"] = positives_by_source(
            labels.indicators, table.source, np.asarray(table.outcomes, dtype=object)[table.episode_index],
            keep=table.usable)
        quarters = positive_rate_by_position(ind_list, table.outcomes, "failure", 4)
        metrics["positive_rate_failed_by_quarter"] = quarters
        metrics["positive_rate_failed_last_quarter"] = quarters[-1]
        metrics["thresholds"] = labels.thresholds
        if guard is not None:
            metrics["fallback"] = guard

    # 3. policy: the recipe's type, its config from the data and the recipe (printed: the run's defaults)
    trained = Method.FILTERED_BC if metrics.get("fallback") else spec.method
    pdata = policy_data(table, trained, labels, first_fit=spec.first_fit, negative_weight=spec.recap.negative_weight)
    beta = spec.recap.cfg_beta if trained == Method.RECAP and not spec.first_fit else 1.0
    ptype, pcfg = policy_config(spec.policy, state_dim=feats.state_dim, action_dim=feats.action_dim,
                                cameras={c: image_size for c in spec.cameras}, seed=spec.seed,
                                indicator_dropout=spec.recap.indicator_dropout, cfg_beta=beta)
    usable_ticks = int(table.usable.sum())
    steps = scaled_steps(pcfg.steps, spec.recap.policy_epochs, usable_ticks, pcfg.batch_size)
    if steps != pcfg.steps:
        ptype, pcfg = policy_config({**spec.policy, "steps": steps}, state_dim=feats.state_dim,
                                    action_dim=feats.action_dim, cameras={c: image_size for c in spec.cameras},
                                    seed=spec.seed, indicator_dropout=spec.recap.indicator_dropout, cfg_beta=beta)
    metrics["policy_steps"] = pcfg.steps
    log.info("run %s: policy %s %s", spec.run_id, ptype, json.dumps(pcfg.to_dict()))
    t0 = time.time()
    policy, plosses = fit_policy(table, pdata, pcfg, device=spec.device, progress=progress,
                                 checkpoint_dir=run_dir / "checkpoints" / "policy", on_step=stepper("policy"))
    curves["policy"] = plosses
    metrics.update({"policy_ticks": int(len(pdata.index)), "policy_final_loss": float(np.mean(plosses[-50:])),
                    "policy_fit_s": time.time() - t0})

    # 4. the chunk critic of value-guided selection (recap.select_chunks > 1), saved in the policy's artifact
    if spec.recap.select_chunks > 1:
        policy.critic, metrics["chunk_critic"], curves["critic"] = fit_chunk_critic(
            table, spec, policy, max_len=max_len, image_size=image_size, progress=progress,
            checkpoint_dir=run_dir / "checkpoints" / "critic", on_step=stepper("critic"))
    if not main:  # the weights are identical on every rank (DDP); rank 0 writes the artifact
        distributed.barrier()
        return RunResult(run_dir, run_dir / "policy", {}, metrics)
    if curves:
        _plot_curves(run_dir / "curves.png", curves)
        metrics.update(track_run(run_dir, spec.run_id, curves, metrics, spec.to_dict(), wandb_settings))  # TensorBoard, W&B
    lineage = {"run": spec.run_id, "method": str(spec.method), "trained_as": str(trained), "first_fit": spec.first_fit,
               "value_guard": metrics.get("fallback") or metrics.get("value_guard"),
               "selection": sel["selection"], "selection_digest": sel["digest"], "episodes": len(sel["episodes"]),
               "parent_version": spec.parent_version, "seed": spec.seed, "recap": asdict(spec.recap),
               "task_max_len": max_len, "instructions": sorted(set(table.instructions)), "excluded": excluded,
               "masked": masked}
    pdir = run_dir / "policy"
    if pdir.exists():  # a crash after writing it: the manifest decides whether it is whole
        shutil.rmtree(pdir)
    manifest = policy.save(pdir, lineage=lineage, metrics=metrics)
    (run_dir / "done.json").write_text(json.dumps(metrics, indent=1))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the artifacts supersede them
    distributed.barrier()
    return RunResult(run_dir, pdir, manifest, metrics)


def fit_chunk_critic(table, spec: RunSpec, policy: Policy, *, max_len: dict[str, int], image_size: tuple[int, int],
                     progress: bool = True, checkpoint_dir: Path | None = None,
                     on_step: Callable[[int, int], None] | None = None):
    """Q(o, l, t, a_{t:t+H}) over the run's whole selection: V's native network with the policy's chunk
    as one more input, V's two-hot targets (the normalised return from the tick), the value section's
    settings and budget rule; a quarter of its samples hide the time (a robot may not send the tick).
    Returns (ChunkCritic, metrics with its held-out calibration like V's, losses)."""
    from training.calibration import correlations
    from training.policies.policy import ChunkCritic

    returns, known = normalised_return_targets(table, max_len, spec.recap.c_fail)
    if not known.any():
        raise TrainingDataError("recap.select_chunks: no episode of the selection has a known outcome to fit the "
                                "chunk critic on")
    section = {k: v for k, v in spec.value.items() if k not in ("backbone", "vlm")}  # the critic is native
    derived = dict(state_dim=table.state.shape[1], cameras=list(spec.cameras), image_size=image_size,
                   num_bins=spec.recap.num_bins, seed=spec.seed + 1, chunk=policy.chunk,
                   action_dim=table.action.shape[1], time_dropout=0.25)
    base = ValueConfig(**derived, **section)
    section["steps"] = scaled_steps(base.steps, spec.recap.value_epochs, int(known.sum()), base.batch_size)
    cfg = ValueConfig(**derived, **section)
    t0 = time.time()
    model, sstats, losses = fit_value(table, cfg, max_len=max_len, c_fail=spec.recap.c_fail, device=spec.device,
                                      progress=progress, checkpoint_dir=checkpoint_dir, on_step=on_step)
    held_out = held_out_members(model, table, cfg.seed)
    q = predict_values(model, table, sstats, max_len=max_len, device=spec.device, held_out=held_out,
                       action_stats=policy.stats["action"])
    limits = {instr: max_len[task] for instr, task in zip(table.instructions, table.task_ids)}
    critic = ChunkCritic(model.eval(), policy.stats, spec.recap.select_chunks, limits)
    metrics = {"select_chunks": spec.recap.select_chunks, "steps": cfg.steps, "fit_s": time.time() - t0,
               "final_loss": float(np.mean(losses[-50:])),
               "calibration": {"held_out": held_out is not None,
                               **(correlations(q[known], returns[known]) if held_out is not None else {})}}
    return critic, metrics, losses


def load_policy(directory: str | Path, device: str = "cpu") -> tuple[Policy, dict]:
    """Verified load of a policy artifact of any registered type: (policy, manifest)."""
    return load_registered_policy(directory, device)
