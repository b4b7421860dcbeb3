"""The rounds, driven the way the lab's people would drive them: teleoperators record
demonstrations and stand by to correct at the robots' stations (ROS 2), a researcher starts
training runs through the API, an operator deploys each new version to one robot as a gated canary
(services/canary.py): every robot runs autonomous episodes on the same canary layouts until the gate compares the canary with the rest of the fleet and widens or rolls it back by
itself. Figures per round come back from the API (the catalog of registered episodes).

Evaluation episodes are flagged as evaluation in the catalog the moment each is recorded, so no
training run ever selects them (the figures stay held out). `rollback_drill_round`: in that round a
deliberately worse version (a policy fit for a single step) goes through the gate first, which
must roll it back.

Layouts (the arm's initial conditions) are fixed per role: demonstrations, collection per round
and robot, and one fixed evaluation set per robot reused every round, so rounds compare paired
(training/sim/rounds.py, the same layouts the benchmark uses, a robot being its group).

A robot that gets stuck (no progress for `stall_s`) or loses a node mid-episode does not end the
demo: the station aborts the episode (kept as incomplete, never in a training selection or the
figures), the robot's cell is restarted and the same episode (same layout) runs again, one line
each time; after `retries` failed restarts for one episode that robot stops for the rest of the run
(one line) and the others go on. Only when no robot is left does the demo end, with an error line."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from robot_bridge.station import EpisodeOutcome, StationError
from data.effort import EpisodeEffort, effort_figures
from services.demo.config import DemoConfig
from services.demo.stack import DemoStack, StackError, check
from services.demo.view import View
from training.sim.operators import operator_mix
from training.sim.rounds import canary_layout, collect_layout, demo_layout, eval_layout

# How long a deployment may take to be served: the first LeRobot version loads the library and builds the
# model in the inference server (SmolVLA-tiny took 50-70 s on 2 busy cores; the native policy ~1 s).
SERVE_WAIT_S = 300
GATE_LOOK_S = 5.0  # the API's gate thread looks every 2 s: an open gate after this waits for more episodes


class DemoLoop:
    def __init__(self, stack: DemoStack, cfg: DemoConfig, out: Path, view: View):
        self.stack, self.cfg, self.out, self.view = stack, cfg, out, view
        self.state = stack.state
        self.state.setdefault("done", [])
        self.state.setdefault("episodes", {})
        self.state.setdefault("versions", {})
        self.state.setdefault("records", [])
        self.state.setdefault("gates", [])
        self.state.setdefault("deployed", {})
        self.robots = cfg.robot_ids()  # every robot's data counts, even after it stopped
        self.stopped: dict[str, str] = {}  # robot -> why it was taken out of the run
        self.teleop_budget: int | None = None  # the round's correction budget, set again on a restarted cell
        self.stopping = threading.Event()
        self.current_run: str | None = None

    def interrupt(self) -> None:
        """Ctrl-C: robots finish the episode they are in; a training run in progress is cancelled
        through the API (as a researcher would), so the worker stops within a second."""
        self.stopping.set()
        if self.current_run:
            try:
                with self.stack.client("researcher") as c:
                    c.post(f"/v1/runs/{self.current_run}/cancel")
            except Exception:
                pass

    # -- bookkeeping ---------------------------------------------------------------------------

    def save(self) -> None:
        f = self.out / "state.json"
        tmp = f.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(f)
        f.chmod(0o600)  # it holds the demo's API tokens

    def _step(self, key: str, fn) -> None:
        """Run a phase once: a re-run continues after the last phase that finished."""
        if key in self.state["done"]:
            self.view.log(f"{key}: done in an earlier run")
            return
        fn()
        self.state["done"].append(key)
        self.save()

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> list[dict]:
        cfg = self.cfg
        self._step("r0.demos", self.demonstrations)
        self._step("r0.train", lambda: self.train(0, "bc", parent=None))
        self._step("r0.deploy", lambda: self.deploy(self.state["versions"]["0"], "fleet", "*", "deploy"))
        self.state["deployed"]["0"] = self.state["versions"]["0"]
        self._step("r0.eval", lambda: self.evaluate(0))
        for r in range(1, cfg.rounds + 1):
            parent = self.state["versions"][str(r - 1)]
            self._step(f"r{r}.collect", lambda r=r: self.collect(r))
            self._step(f"r{r}.train", lambda r=r, p=parent: self.train(r, "recap", parent=p))
            if r == cfg.rollback_drill_round:
                self._step(f"r{r}.drill", lambda r=r: self.rollback_drill(r))
            self._step(f"r{r}.canary", lambda r=r: self.canary(r))
            self._step(f"r{r}.eval", lambda r=r: self.evaluate(r))
        return self.state["records"]

    # -- robots --------------------------------------------------------------------------------

    def _episodes(self, phase: str, plan: dict[str, list[dict]], evaluation: bool = False) -> list[dict]:
        """plan: robot -> episode kwargs, run on every robot at once (one thread per station).
        `evaluation`: each episode is flagged as evaluation in the catalog as soon as it is recorded."""
        if not plan:
            raise StackError(f"every robot stopped: {'; '.join(f'{r}: {why}' for r, why in self.stopped.items())}")
        total = sum(len(v) for v in plan.values())
        done = {"n": 0}

        def one_robot(robot: str) -> list[dict]:
            out = []
            for i, kw in enumerate(plan[robot]):
                if self.stopping.is_set() or robot in self.stopped:
                    break
                what = f"{phase} {i + 1}/{len(plan[robot])} ({kw['kind']}, layout {kw['layout']})"
                self.view.robot(robot, what)
                o = self._episode(robot, what, kw)
                if o is None:
                    break
                if evaluation:
                    self.flag_evaluation(o.episode_id)
                out.append({**asdict(o), "robot": robot, "operator": kw.get("operator", "")})
                done["n"] += 1
                self.view.progress(phase, done["n"], total)
            self.view.robot(robot, f"{phase}: {len(out)} episodes, {sum(e['success'] for e in out)} successes")
            return out

        pool = ThreadPoolExecutor(len(plan))
        try:
            futures = [pool.submit(one_robot, robot) for robot in plan]
            results = [e for f in futures for e in f.result()]
        except BaseException:
            self.stopping.set()  # the other robots stop after their current episode
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
        self.stack.check()
        if not self.active():
            raise StackError(f"every robot stopped: {'; '.join(f'{r}: {why}' for r, why in self.stopped.items())}")
        self.wait_registered([e["episode_id"] for e in results])
        self.state["episodes"][phase] = self.state["episodes"].get(phase, []) + results
        return results

    def active(self) -> list[str]:
        return [r for r in self.robots if r not in self.stopped]

    def _episode(self, robot: str, what: str, kw: dict) -> EpisodeOutcome | None:
        """One planned episode on `robot`, through stuck episodes and crashed nodes: abort, restart the
        cell, run it again; None once the robot is stopped."""
        for attempt in range(self.cfg.retries + 1):
            try:
                return self.stack.stations[robot].run_episode(
                    timeout_s=120 + 2 * self.cfg.max_steps, stall_s=self.cfg.stall_s,
                    alive=lambda: self.stack.cell_down(robot), **kw)
            except StationError as e:
                problem = str(e)
            self.state.setdefault("recoveries", []).append({"robot": robot, "episode": what, "problem": problem,
                                                            "attempt": attempt + 1})
            if self.stopping.is_set():
                return None  # Ctrl-C: no restart, the run ends
            if attempt == self.cfg.retries:
                break
            self.view.log(f"{robot}: {what}: {problem}; episode aborted, restarting the robot's nodes "
                          f"(retry {attempt + 1}/{self.cfg.retries})")
            try:
                self.stack.restart_cell(robot)
                if self.teleop_budget is not None and kw["kind"] == "corrected":
                    self.stack.stations[robot].set_teleop(budget=self.teleop_budget)
            except StationError as e:
                problem = f"its nodes did not come back ({e})"
        why = f"{problem} ({self.cfg.retries} restarts did not help)"
        self.stopped[robot] = why
        self.view.log(f"{robot} stopped for the rest of the run: {why}")
        self.view.robot(robot, "stopped")
        self.stack.stop_robot(robot)
        return None

    def demonstrations(self) -> None:
        self.view.phase("round 0: teleoperators record demonstrations (operator mix: clean / slow / sloppy)")
        plan = {}
        for i, robot in enumerate(self.robots):
            if robot in self.stopped:
                continue
            ops = operator_mix(self.cfg.demos_per_robot, seed=self.cfg.seed + i, mix=self.cfg.demo_mix)
            plan[robot] = [{"kind": "demonstration", "operator": op.name, "seed": 1000 * i + k,
                            "layout": demo_layout(i, k)} for k, op in enumerate(ops)]
        eps = self._episodes("demos", plan)
        self.view.log(f"demonstrations: {len(eps)} recorded, {sum(e['success'] for e in eps)} successful")

    def _new_budget(self) -> None:
        self.teleop_budget = self.cfg.correction_budget
        for robot, st in self.stack.stations.items():  # a new round of correction budget
            if robot not in self.stopped:
                st.set_teleop(budget=self.teleop_budget)

    def collect(self, r: int) -> None:
        self.view.phase(f"round {r}: the fleet runs {self.state['deployed'][str(r - 1)]} with teleoperators "
                        "standing by to correct")
        self._new_budget()
        plan = {robot: [{"kind": "corrected", "seed": k, "layout": collect_layout(r, i, k)}
                        for k in range(self.cfg.collect_per_robot)]
                for i, robot in enumerate(self.robots) if robot not in self.stopped}
        self._episodes(f"r{r}.collect", plan)

    def evaluate(self, r: int) -> None:
        v = self.state["deployed"][str(r)]
        self.view.phase(f"round {r}: autonomous episodes of {v} on the fixed evaluation layouts "
                        "(flagged as evaluation: never trained on)")
        plan = {robot: [{"kind": "autonomous", "layout": eval_layout(i, k)}
                        for k in range(self.cfg.eval_per_robot)]
                for i, robot in enumerate(self.robots) if robot not in self.stopped}
        self.state["episodes"].pop(f"r{r}.eval", None)  # a re-run of the phase records it anew
        eps = self._episodes(f"r{r}.eval", plan, evaluation=True)
        collected = self.state["episodes"].get(f"r{r}.collect", self.state["episodes"].get("demos", []))
        rec = self.record(r, v, eps, collected)
        self.state["records"] = [x for x in self.state["records"] if x["round"] != r] + [rec]
        self.view.table(self.state["records"])

    def canary(self, r: int) -> None:
        """The round's version to one robot under a gate; every robot runs autonomous episodes on the
        same canary layouts until the gate widens it to the fleet or rolls it back."""
        v, previous = self.state["versions"][str(r)], self.state["deployed"][str(r - 1)]
        gate = self.gated_canary(r, v, f"r{r}.canary", first_layout=0)
        self.state["deployed"][str(r)] = v if gate is None or gate["status"] == "passed" else previous

    def rollback_drill(self, r: int) -> None:
        """A deliberately worse version (the round's recipe fit for one step) through the gate, which
        must roll it back; the round's real version follows."""
        self.view.phase(f"round {r}: rollback drill: a deliberately worse version goes to a gated canary")
        bad = self.train(r, "bc", parent=self.state["versions"][str(r - 1)], steps=1, keep=False)
        gate = self.gated_canary(r, bad, f"r{r}.drill", first_layout=100, drill=True)
        if gate is not None and gate["status"] != "failed":
            raise StackError(f"rollback drill: the gate did not roll back the worse version {bad}: {gate['reason']}")

    def gated_canary(self, r: int, version: str, phase: str, first_layout: int, drill: bool = False) -> dict | None:
        cfg, active = self.cfg, self.active()
        canary, fleet = active[0], self.state["deployed"][str(r - 1)]
        if len(active) < 2:  # nothing to compare a canary with
            self.view.log(f"one robot: no rest of the fleet to compare a canary with; {version} goes to the fleet")
            self.deploy(version, "fleet", "*", "deploy")
            return None
        with self.stack.client("operator") as c:
            now = c.get("/v1/deployments/current").json()
        if any(now.get(robot) != fleet for robot in active):  # a run that stopped mid-phase left another state
            self.view.log(f"the fleet is not on {fleet} (an interrupted run left {now}); deploying {fleet} first")
            self.deploy(fleet, "fleet", "*", "deploy")
        self.deploy(version, "robot", canary, "canary",
                    gate={"min_episodes": cfg.canary_episodes, "threshold": cfg.gate_threshold})
        with self.stack.client("operator") as c:
            gate_id = c.get("/v1/deployments").json()[0]["gate_id"]
        self.view.phase(f"round {r}: gated canary #{gate_id}: {version} on {canary}, the rest of the fleet on {fleet}; "
                        f"every robot works the same layouts until the gate decides ({cfg.canary_episodes} episodes each)")
        self.state["episodes"].pop(phase, None)  # a re-run of the phase records it anew
        self.state["gates"] = [g for g in self.state["gates"] if (g["round"], g["drill"]) != (r, drill)]
        k, gate = first_layout, None
        for batch in range(cfg.gate_batches):
            n = cfg.canary_episodes if batch == 0 else 1
            plan = {robot: [{"kind": "autonomous", "layout": canary_layout(r, k + j)} for j in range(n)]
                    for robot in self.active()}
            k += n
            self._episodes(phase, plan)
            gate = self.wait_gate(gate_id)
            if gate["status"] != "open":
                break
            self.view.log(f"gate #{gate_id}: {gate['reason']}")
        if gate is None or gate["status"] == "open":
            raise StackError(f"gate #{gate_id} did not decide after {cfg.gate_batches} batches: {gate and gate['reason']}")
        self.state["gates"].append({"round": r, "drill": drill, **{k_: gate[k_] for k_ in (
            "id", "version_id", "robot_id", "baseline_version", "status", "reason", "figures", "min_episodes",
            "threshold")}})
        self.view.log(f"gate #{gate_id} {gate['status']}: {gate['reason']}")
        self.await_serving()
        return gate

    def wait_gate(self, gate_id: int, timeout: float = GATE_LOOK_S) -> dict:
        """The gate as the API holds it: decided, or still open after the API has had time to look at
        every registered episode (it looks at each registration, and every 2 s in its thread)."""
        deadline = time.monotonic() + timeout
        with self.stack.client("operator") as c:
            while True:
                resp = c.get("/v1/deployments/gates")
                check(resp)
                gate = next(g for g in resp.json() if g["id"] == gate_id)
                if gate["status"] != "open" or time.monotonic() > deadline:
                    return gate
                time.sleep(0.25)

    # -- the API, as a researcher and an operator ----------------------------------------------

    def train(self, r: int, method: str, parent: str | None, steps: int | None = None, keep: bool = True) -> str:
        who = "first fit on the demonstrations (BC)" if method == "bc" else "RECAP on all the fleet's data"
        if steps is not None:
            who = f"{method} for {steps} step(s), deliberately worse"
        self.view.phase(f"round {r}: a researcher starts a training run — {who}")
        recipe = self.cfg.recipe()
        if steps is not None:
            recipe["policy"] = {**recipe["policy"], "steps": steps}
        body = {"method": method, "selection": {"robot": self.robots, "status": ["complete"]},
                "recipe": recipe, "parent_version": parent, "seed": self.cfg.seed}
        with self.stack.client("researcher") as c:
            r0 = c.post("/v1/runs", json=body)
            check(r0)
            run_id = r0.json()["id"]
            self.current_run = run_id
            self.view.log(f"training run {run_id} queued ({method})")
            while True:
                self.stack.check()
                resp = c.get(f"/v1/runs/{run_id}")
                check(resp)
                run = resp.json()
                self.view.run(run)
                if run["status"] in ("finished", "failed", "cancelled"):
                    break
                time.sleep(1.0)
        self.current_run = None
        if run["status"] != "finished":
            raise StackError(f"training run {run_id} {run['status']}: {run['error']}")
        if keep:
            self.state["versions"][str(r)] = run["version_id"]
            self.state.setdefault("runs", {})[str(r)] = run_id
        self.view.log(f"run {run_id} finished: policy version {run['version_id']} registered")
        return run["version_id"]

    def deploy(self, version: str, kind: str, target: str, stage: str, gate: dict | None = None) -> None:
        with self.stack.client("operator") as c:
            check(c.post("/v1/deployments", json={"version": version, "target_kind": kind, "target": target,
                                                "stage": stage, "note": "recap demo", "gate": gate}))
        t0 = time.monotonic()
        self.await_serving()
        self.view.log(f"{stage}: {version} -> {kind} {target}; serving after {time.monotonic() - t0:.2f} s")

    def await_serving(self) -> None:
        with self.stack.client("operator") as c:
            assigned = c.get("/v1/deployments/current").json()
        want = {robot: assigned.get(robot) for robot in self.robots}
        t0 = time.monotonic()
        while True:  # until the inference server serves what the registry says (hot swap over Redis)
            table = httpx.get(self.stack.inference.url + "/v1/serving", timeout=10).json()
            served = {robot: table["robots"].get(robot) or table["fleet_version"] for robot in self.robots}
            if served == want:
                break
            if time.monotonic() - t0 > SERVE_WAIT_S:
                raise StackError(f"inference server serves {served}, the registry says {want}")
            time.sleep(0.1)

    def flag_evaluation(self, episode_id: str) -> None:
        """Register the episode (if its bridge has not yet) and flag it as evaluation: held out."""
        with self.stack.client("teleoperator") as c:
            check(c.post("/v1/episodes/register", json={"episode_id": episode_id}))
            check(c.post("/v1/episodes/evaluation", json={"episode_ids": [episode_id], "evaluation": True}))

    def wait_registered(self, ids: list[str], timeout: float = 60.0) -> None:
        """The bridges register committed episodes with the API in the background."""
        deadline = time.monotonic() + timeout
        missing = set(ids)
        with self.stack.client("teleoperator") as c:
            while missing and time.monotonic() < deadline:
                missing = {i for i in missing if c.get(f"/v1/episodes/{i}").status_code != 200}
                if missing:
                    time.sleep(0.2)
        if missing:
            raise StackError(f"{len(missing)} episodes not registered with the API after {timeout} s: {sorted(missing)[:5]}")

    def _api_episodes(self, ids: list[str]) -> list[dict]:
        """The catalog's view of these episodes, in their order: one listing of the fleet's episodes."""
        with self.stack.client("researcher") as c:
            resp = c.get("/v1/episodes", params={"robot": self.robots, "limit": 100_000})
            check(resp)
        by_id = {e["id"]: e for e in resp.json()}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise StackError(f"{len(missing)} episodes are not in the catalog: {missing[:5]}")
        return [by_id[i] for i in ids]

    def record(self, r: int, version: str, evals: list[dict], collected: list[dict]) -> dict:
        """One row of the round table, from the catalog as the API reports it. Human effort: the
        round's collected episodes (the previous version with teleoperators standing by;
        data/effort.py, mistake to takeover where the station recorded the mistake), none for
        round 0 (demonstrations)."""
        ev = self._api_episodes([e["episode_id"] for e in evals])
        col = self._api_episodes([e["episode_id"] for e in collected])
        ok = np.array([e["outcome"] == "success" for e in ev])
        robot_s = sum(e["num_ticks"] / e["fps"] for e in ev) + self.cfg.reset_s * len(ev)
        ticks = sum(e["num_ticks"] for e in col)
        with self.stack.client("operator") as c:
            robots = {x["id"]: x["assigned_version"] for x in c.get("/v1/robots").json() if x["id"] in self.robots}
        per_robot = {robot: float(np.mean([e["outcome"] == "success" for e in ev if e["robot_id"] == robot]))
                     for robot in {e["robot_id"] for e in ev}}
        effort = None if r == 0 else effort_figures(
            EpisodeEffort(e["num_ticks"], e["num_correction_ticks"], e["num_takeovers"], e["fps"], e["outcome"] == "success",
                          tuple(e["mistake_to_takeover_s"]))
            for e in col)
        gates = [g for g in self.state["gates"] if g["round"] == r]
        return {"round": r, "version": version, "episodes": len(ev), "success_rate": float(ok.mean()),
                "success_se": float(np.sqrt(ok.mean() * (1 - ok.mean()) / max(1, len(ok)))),
                "success_per_robot": per_robot, "throughput_per_h": float(ok.sum() / robot_s * 3600),
                "mean_steps": float(np.mean([e["num_ticks"] for e in ev])),
                "evaluation_flagged": sum(bool(e["evaluation"]) for e in ev),
                "collected_episodes": len(col), "collected_success_rate": float(np.mean(
                    [e["outcome"] == "success" for e in col])) if col else 0.0,
                "correction_rate": float(sum(e["num_correction_ticks"] for e in col) / max(1, ticks)),
                "takeovers": effort.takeovers if effort else None,
                "takeovers_per_robot_hour": effort.takeovers_per_robot_hour if effort else None,
                "human_minutes": effort.human_minutes if effort else None,
                "return_on_human_effort": effort.return_on_human_effort if effort else None,
                # where known: the corrective teleoperator's station records when its takeover condition first held
                "takeovers_mistake_known": effort.takeovers_mistake_known if effort else None,
                "mistake_to_takeover_s_mean": effort.mistake_to_takeover_s_mean if effort else None,
                "mistake_to_takeover_s_median": effort.mistake_to_takeover_s_median if effort else None,
                "gates": [{k: g[k] for k in ("id", "version_id", "status", "drill")} for g in gates],
                "versions_in_ticks": sorted({x for e in ev for x in e["policy_versions"]}),
                "robot_versions": robots}
