"""The offline-to-online loop on the simulated arm, one loop per (method, training seed):

round 0 (shared by every method): demonstrations from a mix of scripted operators -> the first fit
    on demonstrations alone, indicator fixed to positive (the paper's first fine-tune);
round r = 1..R: collect autonomous episodes with the corrective teleoperator (budgeted) ->
    a training run of the method on all data of its own loop (from the base weights) ->
    evaluation on held-out initial conditions without corrections.

Everything goes through the real episode store, catalog and training runs. Seeds are fixed per
role (demonstrations, collection per round, evaluation: training/sim/rounds.py, the layouts the demo
uses too), so methods are compared paired.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from data.catalog import Catalog
from data.store import EpisodeStore
from training import recap
from training.methods import Method
from training.runs import RunSpec, load_policy, run_training
from training.sim.arm import MetaWorldArm
from training.sim.collect import EpisodeResult, PolicyActor, run_episode
from training.sim.evaluate import evaluate, metrics
from training.sim.operators import operator_mix
from training.sim.rounds import RoundPlan, collect_layout, demo_layout, eval_layout, validation_layout
from training.sim.teleop import TakeoverRule

log = logging.getLogger(__name__)

@dataclass
class LoopConfig(RoundPlan):
    """The round (rounds, max_steps, demo_mix, correction_budget per task, value, policy) is RoundPlan's,
    shared with the demo; a group is a task here."""
    tasks: list[str] = field(default_factory=lambda: ["push-v3", "pick-place-v3", "peg-insert-side-v3"])
    demos_per_task: int = 10
    episodes_per_round: int = 20  # per task
    eval_episodes: int = 50  # per task, held-out seeds
    rule: dict = field(default_factory=dict)  # TakeoverRule overrides
    # the corrective teleoperator's style, per episode from this operator mix ({"clean": .., "slow": ..,
    # "sloppy": ..}); None: corrections are the expert's own actions (an oracle)
    corrector_mix: dict | None = None
    # which held-out layouts evaluate: "evaluation" (measuring only) or "validation" (choosing settings)
    eval_role: str = "evaluation"
    recap: dict = field(default_factory=dict)  # RecapConfig overrides (advantage_horizon, ...)
    cfg_beta: float = 2.0  # RECAP-CFG's guidance: written into its artifacts, so served and evaluated alike
    # K of value-guided chunk selection for the "+ selection" methods (recap_select, filtered_bc_select): their
    # runs train a chunk critic (recap.select_chunks K) and their artifacts execute the best of K chunks
    select_chunks: int = 4
    image_size: tuple[int, int] | None = None  # a rendered front camera (H, W) that the policy sees
    device: str = "cpu"

    def __post_init__(self) -> None:
        """`policy` is a recipe's policy section ({"type": a registered type, its settings}; no type: the
        native one), checked here so that a bad key fails before any episode is collected."""
        from training.policies.registry import validate_policy_recipe

        validate_policy_recipe(self.policy)
        if self.image_size is not None:
            self.image_size = tuple(int(x) for x in self.image_size)

    def to_dict(self) -> dict:
        return asdict(self)


METHODS = ["bc", "hg_dagger", "filtered_bc", "awr", "recap", "recap_cfg", "recap_select", "filtered_bc_select"]
SELECT_SUFFIX = "_select"  # "+ selection": the method's run also trains a chunk critic, its policy selects


def method_of(name: str) -> tuple[Method, float]:
    """Loop name -> (training method, beta at inference)."""
    name = name.removesuffix(SELECT_SUFFIX)
    return (Method.RECAP, None) if name == "recap_cfg" else (Method(name), 1.0)


def selects(name: str) -> bool:
    """Whether a loop method is a "+ selection" one (value-guided chunk selection)."""
    return name.endswith(SELECT_SUFFIX)


class SimLoop:
    def __init__(self, cfg: LoopConfig, workdir: str | Path, *, progress: bool = False,
                 say: Callable[[str], None] = lambda m: None):
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.store = EpisodeStore(self.workdir / "store")
        self.catalog = Catalog.for_store(self.store)
        self.runs_dir = self.workdir / "runs"
        self.progress = progress
        self.say = say
        self.arms = {t: MetaWorldArm(t, max_steps=cfg.max_steps, image_size=cfg.image_size) for t in cfg.tasks}
        self.cameras = ["front"] if cfg.image_size else []

    # -- data ------------------------------------------------------------------------------

    def collect_demos(self) -> list[EpisodeResult]:
        done = self.workdir / "demos.json"
        if done.exists():
            return [EpisodeResult(**r) for r in json.loads(done.read_text())]
        results = []
        for ti, (task, arm) in enumerate(self.arms.items()):
            for i, op in enumerate(operator_mix(self.cfg.demos_per_task, seed=ti, mix=self.cfg.demo_mix)):
                res = run_episode(arm, demo_layout(ti, i), store=self.store, robot_id="demo", operator=op)
                self.catalog.register(self.store.open(res.episode_id))
                results.append(res)
        done.write_text(json.dumps([asdict(r) for r in results]))
        return results

    def _spec(self, run_id: str, method: Method, robots: list[str], seed: int, first_fit: bool, parent: str | None,
              beta: float = 1.0, first_labelled: bool = False, select: bool = False) -> RunSpec:
        """`beta`: the guidance the policy is served and evaluated with, written into its artifact;
        `select`: the run trains a chunk critic and its policy selects (K = cfg.select_chunks)."""
        k = {"select_chunks": self.cfg.select_chunks} if select else {}
        return RunSpec(run_id=run_id, method=method, selection={"robot": robots}, first_fit=first_fit,
                       first_labelled=first_labelled,
                       recap=recap.RecapConfig(**(self.cfg.recap | {"cfg_beta": beta} | k)), value=dict(self.cfg.value),
                       policy=dict(self.cfg.policy), task_max_len=self.cfg.task_max_len(self.cfg.tasks),
                       cameras=self.cameras, parent_version=parent, seed=seed, device=self.cfg.device)

    def actor_factory(self, policy_dir: Path, beta: float | None, seed: int, indicator: int = recap.INDICATOR_POSITIVE):
        """beta None: the artifact's β, exactly what the inference server would use."""
        policy, _ = load_policy(policy_dir, self.cfg.device)

        def make(task: str) -> PolicyActor:
            return PolicyActor(policy, self.arms[task].instruction, beta=beta, indicator=indicator, seed=seed)
        return make

    # -- the loop --------------------------------------------------------------------------

    def round0(self, seed: int) -> Path:
        self.collect_demos()
        res = run_training(self.store, self.catalog, self._spec(f"r0-s{seed}", Method.RECAP, ["demo"], seed, True, None),
                           self.runs_dir, progress=self.progress)
        return res.policy_dir

    def evaluate_policy(self, policy_dir: Path, beta: float | None, seed: int,
                        indicator: int = recap.INDICATOR_POSITIVE) -> dict[str, dict]:
        layout = validation_layout if self.cfg.eval_role == "validation" else eval_layout
        seeds = [layout(0, k) for k in range(self.cfg.eval_episodes)]  # the same set for every task
        per_task = evaluate(self.actor_factory(policy_dir, beta, seed, indicator), self.arms, seeds)
        out = {t: metrics(r).to_dict() for t, r in per_task.items()}
        out["all"] = metrics([x for r in per_task.values() for x in r]).to_dict()
        out["per_episode_success"] = {t: [int(x.success) for x in r] for t, r in per_task.items()}
        out["per_episode_steps"] = {t: [x.steps for x in r] for t, r in per_task.items()}
        return out

    def correctors(self, round_: int, task_index: int) -> list:
        """The teleoperator's style for each collected episode of a round and task (None: the oracle)."""
        if not self.cfg.corrector_mix:
            return [None] * self.cfg.episodes_per_round
        return operator_mix(self.cfg.episodes_per_round, seed=10_000 * round_ + task_index, mix=self.cfg.corrector_mix)

    def run(self, name: str, seed: int, policy0: Path) -> list[dict]:
        """One method's loop; returns per-round records (round 0 = the shared first fit).

        Resumable per round: a finished round's record is kept under cells/ and read back; a round
        whose collection did not finish is collected again (its partial episodes leave the catalog
        and its training run starts over); a round collected but not trained resumes its run."""
        method, beta = method_of(name)
        beta = self.cfg.cfg_beta if beta is None else beta
        robot = f"{name}-s{seed}"
        cells = self.workdir / "cells"
        cells.mkdir(exist_ok=True)
        policy = policy0
        records = []
        for r in range(1, self.cfg.rounds + 1):
            done = cells / f"{robot}-r{r}.json"
            if done.exists():
                rec = json.loads(done.read_text())
                records.append(rec)
                policy = self.workdir / rec["policy_dir"]
                continue
            version = f"{robot}-r{r - 1}"
            marker = cells / f"{robot}-r{r}.collected.json"
            if marker.exists():
                collected = [EpisodeResult(**x) for x in json.loads(marker.read_text())]
            else:
                partial = [e.id for e in self.catalog.episodes(robot=robot, policy_version=version)]
                if partial:
                    self.catalog.remove(partial)
                shutil.rmtree(self.runs_dir / f"{robot}-r{r}", ignore_errors=True)
                collected = self._collect(r, robot, version, policy, beta, seed)
                marker.write_text(json.dumps([asdict(x) for x in collected]))
            # BC keeps training on demonstrations only but still collects, as the reference
            robots = ["demo"] if method == Method.BC else ["demo", robot]
            spec = self._spec(f"{robot}-r{r}", method, robots, seed, False, version, beta, first_labelled=r == 1,
                              select=selects(name))
            run = run_training(self.store, self.catalog, spec, self.runs_dir, progress=self.progress)
            policy = run.policy_dir
            ev = self.evaluate_policy(policy, None, seed)  # the artifact's β: what the server would use
            rec = {"method": name, "seed": seed, "round": r, "collect": metrics(collected).to_dict(),
                   "collected": [asdict(x) for x in collected], "eval": ev, "run": run.metrics,
                   "policy_dir": str(Path(policy).relative_to(self.workdir))}
            done.write_text(json.dumps(rec))
            records.append(rec)
            self.say(f"{name} seed {seed} round {r}: success {ev['all']['success_rate']:.2f} "
                     f"throughput {ev['all']['throughput_per_h']:.0f}/h corrections {rec['collect']['correction_rate']:.2f}")
        return records

    def _collect(self, r: int, robot: str, version: str, policy: Path, beta: float, seed: int) -> list[EpisodeResult]:
        rule = TakeoverRule(round_budget=self.cfg.correction_budget, **self.cfg.rule)
        collected = []
        # round 1 collects with the shared first fit (written at β = 1) at the method's β; later rounds
        # collect with the method's own policy at its artifact's β (the same value)
        actors = self.actor_factory(policy, beta if r == 1 else None, seed)
        for ti, (task, arm) in enumerate(self.arms.items()):
            rule.reset_round()
            actor = actors(task)
            for i, corrector in enumerate(self.correctors(r, ti)):
                res = run_episode(arm, collect_layout(r, ti, i), store=self.store, robot_id=robot, actor=actor,
                                  rule=rule, policy_version=version, corrector=corrector)
                self.catalog.register(self.store.open(res.episode_id))
                collected.append(res)
        return collected
