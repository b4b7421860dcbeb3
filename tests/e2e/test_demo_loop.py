"""The loop end to end, through the same processes `make demo` starts: Redis, the API under
uvicorn, an RQ worker, the inference server, and per simulated robot an arm, a scripted
teleoperator and a bridge on its own ROS domain, in its own namespace. A first run is interrupted
(SIGINT, as Ctrl-C) after the demonstrations; every process must go; a second run continues and
finishes one RECAP round, although one robot's arm is SIGKILLed mid-episode (the station aborts the
episode, restarts that robot's nodes and runs the episode again). In that round a deliberately worse
version goes through the canary gate first, which rolls it back by itself (the decision with its
figures in the audit log and in `recap fleet history`, run by an operator while the round goes on, and
the fleet back on the previous version); then the round's version goes through the gate; evaluation episodes are flagged as such and no training run uses them. Then the artifacts are checked
from the outside: store, runs, control-plane database. A second test runs the smallest round of a
LeRobot image policy (ACT, SmolVLA on a tiny SmolVLM) with a rendered camera through the same stack."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from sqlalchemy import select

from data.schema import ActionSource
from data.store import EpisodeStore

ERROR_MARKS = ("Traceback", " ERROR ", "[ERROR]", "tick failed")
EVALS = 2  # evaluation episodes per robot and round: the held-out rule and the round's figures need a few


def _demo(out: Path, domain: int) -> list[str]:
    return [sys.executable, "-m", "data.cli_root", "demo", "--quick", "--out", str(out), "--ros-domain", str(domain),
            "--no-live", "--set", "rollback_drill_round=1", "--set", f"eval_per_robot={EVALS}"]


def _descendants(pid: int) -> set[int]:
    """The demo's processes: its children start their own sessions, so they are found by parent."""
    try:
        return {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def _fleet_history(log: Path, state: dict) -> subprocess.CompletedProcess:
    """`recap fleet history` against the running demo's API, with its operator token."""
    url = re.search(r"API on (http://127\.0\.0\.1:\d+)", log.read_text()).group(1)
    env = {**__import__("os").environ, "RECAP_API_URL": url, "RECAP_TOKEN": state["tokens"]["operator"]}
    return subprocess.run([sys.executable, "-m", "data.cli_root", "fleet", "history"], capture_output=True, text=True,
                          env=env, timeout=120)


def _flushed(store: EpisodeStore, episode_id: str) -> int:
    """Ticks an episode in flight has made durable (its journal), 0 when unreadable."""
    try:
        return json.loads((store.episode_dir(episode_id) / "journal.json").read_text())["flushed_ticks"]
    except (OSError, ValueError, KeyError):
        return 0


def _is_arm_of(p: psutil.Process, namespace: str) -> bool:
    try:
        cmd = p.cmdline()
    except psutil.Error:  # gone meanwhile
        return False
    return "robot_bridge.sim.arm_node" in cmd and f"__ns:={namespace}" in cmd


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_round_through_the_real_stack_interrupted_then_continued(tmp_path):
    out = tmp_path / "demo_out"
    domain = random.randint(100, 200)
    # -- first run: interrupted after the demonstrations ----------------------------------------
    first = subprocess.Popen(_demo(out, domain), stdout=open(tmp_path / "run1.log", "wb"), stderr=subprocess.STDOUT)
    seen: set[int] = set()
    deadline = time.monotonic() + 400
    state_file = out / "state.json"
    while time.monotonic() < deadline and first.poll() is None:
        seen |= _descendants(first.pid)
        if state_file.exists() and "r0.demos" in json.loads(state_file.read_text()).get("done", []):
            break
        time.sleep(0.5)
    assert first.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
    seen |= _descendants(first.pid)
    assert len(seen) >= 4 + 3 * 2  # redis, api, worker, inference, 2 x (arm, teleop, bridge)
    first.send_signal(signal.SIGINT)
    assert first.wait(90) == 130, (tmp_path / "run1.log").read_text()[-3000:]
    time.sleep(1.0)
    left = [p for p in seen if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind by Ctrl-C: {[psutil.Process(p).cmdline() for p in left]}"
    # -- second run: continues after the last finished phase; sim-arm-1's arm is killed mid-episode
    store = EpisodeStore(out / "home" / "store")
    second = subprocess.Popen(_demo(out, domain), stdout=open(tmp_path / "run2.log", "wb"), stderr=subprocess.STDOUT)
    killed = None
    history = None  # `recap fleet history` as an operator runs it once the drill's gate has decided
    deadline = time.monotonic() + 700
    try:
        while second.poll() is None and time.monotonic() < deadline:
            if history is None and state_file.exists() and "r1.drill" in json.loads(state_file.read_text())["done"]:
                history = _fleet_history(tmp_path / "run2.log", json.loads(state_file.read_text()))
            if killed is None and "autonomous episodes of" in (tmp_path / "run2.log").read_text():  # round 0's eval
                flying = [e for e in store.in_flight_ids() if "-sim-arm-1-" in e and _flushed(store, e) >= 20]
                arms = [p for p in psutil.Process(second.pid).children(recursive=True) if _is_arm_of(p, "/sim_arm_1")]
                if flying and arms:  # an episode well under way: the arm dies mid-episode
                    arms[0].send_signal(signal.SIGKILL)
                    killed = flying[0]
            time.sleep(0.2)
        assert second.poll() == 0, (tmp_path / "run2.log").read_text()[-5000:]
    finally:
        if second.poll() is None:  # past the deadline: Ctrl-C stops the demo and every process it started
            second.send_signal(signal.SIGINT)
            try:
                second.wait(90)
            except subprocess.TimeoutExpired:
                second.kill()
    log = (tmp_path / "run2.log").read_text()
    assert "r0.demos: done in an earlier run" in log
    assert killed is not None, "no sim-arm-1 episode was seen in flight during the evaluation"
    # the recovery: one clear line, the episode aborted (incomplete, out of every figure), run again
    assert "Traceback" not in log
    assert re.search(rf"sim-arm-1: r0\.eval \d/{EVALS} .*sim-arm-1-arm exited with -9 .*; episode aborted, restarting", log), log[-3000:]
    state = json.loads(state_file.read_text())
    recovered = [ln for ln in log.splitlines() if any(w in ln for w in ("aborted", "stopped", "recoveries", "restarting"))]
    assert "recoveries: 1 episode(s)" in log, f"recoveries {state.get('recoveries')}; log lines:\n" + "\n".join(recovered)
    assert store.open(killed).info.status == "incomplete"
    assert [(x["robot"], x["attempt"]) for x in state["recoveries"]] == [("sim-arm-1", 1)]
    evals = state["episodes"]["r0.eval"]
    assert sorted(e["robot"] for e in evals) == ["sim-arm-0"] * EVALS + ["sim-arm-1"] * EVALS
    assert killed not in {e["episode_id"] for phase in state["episodes"].values() for e in phase}
    r0 = state["records"][0]
    assert r0["episodes"] == 2 * EVALS and 0 <= r0["success_rate"] <= 1 and np.isfinite(r0["throughput_per_h"])
    assert 0 < r0["mean_steps"] <= 200 and set(r0["success_per_robot"]) == {"sim-arm-0", "sim-arm-1"}
    for f in (out / "logs").glob("*.log"):
        lines = f.read_text(errors="replace").splitlines()
        bad = [i for i, ln in enumerate(lines) if any(m in ln for m in ERROR_MARKS)]
        # the first error with what follows it (a traceback's last lines name the cause)
        assert not bad, f"{f.name} logged {len(bad)} error line(s), the first:\n" + "\n".join(lines[bad[0]:bad[0] + 60])

    v0, v1 = state["versions"]["0"], state["versions"]["1"]
    # demonstrations: the teleoperator drove, recorded as demonstration (never as correction)
    demos = [store.open(e["episode_id"]) for e in state["episodes"]["demos"]]
    assert all((d.action_source == ActionSource.DEMONSTRATION).mean() > 0.8 for d in demos)
    assert not any((d.action_source == ActionSource.CORRECTION).any() for d in demos)
    # collection: the deployed first fit drove, the teleoperator corrected; each tick says who and which version
    collected = [store.open(e["episode_id"]) for e in state["episodes"]["r1.collect"]]
    src = np.concatenate([c.action_source for c in collected])
    assert (src == ActionSource.CORRECTION).sum() > 0 and (src == ActionSource.POLICY).sum() > 0
    for c in collected:
        for t in range(len(c)):
            want = v0 if c.action_source[t] == ActionSource.POLICY else None
            assert c.policy_version(t) == want
    # the RECAP run: value function and policy trained from the catalog selection; lineage recorded
    run_dir = out / "home" / "runs" / state["runs"]["1"]
    run = json.loads((run_dir / "run.json").read_text())
    assert run["method"] == "recap" and run["parent_version"] == v0
    used = set(json.loads((run_dir / "episodes.json").read_text())["episodes"])
    assert {e["episode_id"] for e in state["episodes"]["r1.collect"] + state["episodes"]["demos"]} <= used
    assert killed not in used  # the aborted episode never reaches training
    evals = {e["episode_id"] for phase in ("r0.eval", "r1.eval") for e in state["episodes"][phase]}
    assert len(evals) == 4 * EVALS and not evals & used  # held out: flagged as evaluation, never selected
    from data.catalog import Catalog

    catalog = Catalog.for_store(store)
    try:
        flagged = {r.id for r in catalog.episodes(evaluation=True)}
        takeovers = sum(r.num_takeovers for r in catalog.episodes(ids=[e["episode_id"] for e in state["episodes"]["r1.collect"]]))
    finally:
        catalog.close()
    assert flagged == evals and takeovers > 0
    assert (run_dir / "value" / "model.safetensors").exists() and (run_dir / "labels").exists()
    manifest = json.loads((run_dir / "policy" / "manifest.json").read_text())
    assert manifest["lineage"]["parent_version"] == v0 and manifest["lineage"]["run"] == state["runs"]["1"]
    # the registry: the version with its run and parent; canary to one robot, then the fleet
    from services.control import ControlDB
    from services.control.models import AuditEntry, CanaryGate, Deployment, PolicyVersion
    from services.settings import ServiceSettings

    drill, real = state["gates"]
    db = ControlDB(ServiceSettings(home=str(out / "home")).control_db_url)
    try:
        with db.session() as s:
            v = s.get(PolicyVersion, v1)
            assert v.run_id == state["runs"]["1"] and v.parent_version == v0
            deps = [(d.stage, d.target_kind, d.target, d.version_id)
                    for d in s.scalars(select(Deployment).order_by(Deployment.id)).all()]
            decision = s.get(Deployment, s.get(CanaryGate, drill["id"]).decision_deployment_id)
            decided_by = (decision.id, decision.stage, decision.target, decision.version_id, decision.created_by)
            gate_audit = [(a.action, a.role, a.detail) for a in s.scalars(
                select(AuditEntry).where(AuditEntry.actor == "canary-gate").order_by(AuditEntry.id)).all()]
    finally:
        db.close()
    # the drill: a deliberately worse version through the gate, rolled back by it; then the round's version
    bad = drill["version_id"]
    assert drill["drill"] and drill["status"] == "failed" and drill["baseline_version"] == v0, drill
    assert drill["reason"].startswith("rolled back")
    # the decision is a rollback made by the gate itself, to the previous version, on the figures it states
    assert decided_by[1:] == ("rollback", "sim-arm-0", v0, "canary-gate")
    f = drill["figures"]
    assert f["canary"]["episodes"] >= drill["min_episodes"] and f["fleet"]["episodes"] >= drill["min_episodes"], f
    assert 0 <= f["p_success_worse"] <= 1 and 0 <= f["p_takeovers_worse"] <= 1 and f["threshold"] == drill["threshold"]
    assert max(f["p_success_worse"], f["p_takeovers_worse"]) >= f["threshold"] or f["canary"]["successes"] == 0, f
    assert f"success {f['canary']['successes']}/{f['canary']['episodes']} vs " in drill["reason"]
    # audited: the gate's decision with its figures and the rollback deployment it made
    action, role, detail = gate_audit[0]
    assert action == f"GATE canary #{drill['id']}" and role == "system"
    assert (detail["status"], detail["version"], detail["baseline"]) == ("failed", bad, v0)
    assert detail["figures"] == f and detail["deployment"] == decided_by[0]
    # `recap fleet history`, as an operator ran it while the round went on: the canary, the gate's rollback, the gate
    assert history is not None and history.returncode == 0, history and history.stderr
    hist = history.stdout
    assert re.search(rf"#\d+ +canary +robot:sim-arm-0 +-> {bad} .*\[gate #{drill['id']}\]", hist), hist
    assert re.search(rf"#\d+ +rollback +robot:sim-arm-0 +-> {v0} .* by canary-gate canary gate #{drill['id']}: rolled back", hist), hist
    assert f"gate #{drill['id']:<3} failed     {bad} on sim-arm-0 vs fleet {v0}" in hist
    assert f"success {f['canary']['successes']}/{f['canary']['episodes']} vs {f['fleet']['successes']}/{f['fleet']['episodes']}" in hist
    assert real["version_id"] == v1 and real["status"] in ("passed", "failed") and not real["drill"]
    deployed = v1 if real["status"] == "passed" else v0
    decided = ("widen", "fleet", "*", v1) if real["status"] == "passed" else ("rollback", "robot", "sim-arm-0", v0)
    assert deps == [("deploy", "fleet", "*", v0), ("canary", "robot", "sim-arm-0", bad), ("rollback", "robot", "sim-arm-0", v0),
                    ("canary", "robot", "sim-arm-0", v1), decided]
    # the rollback left the whole fleet on the previous version: the round's canary found it there (the demo
    # deploys the fleet's version first, and says so, when it does not)
    assert "the fleet is not on" not in log
    # under a gate every robot works the same layouts: the canary its version, the rest of the fleet the old one
    for phase, canary_version in (("r1.drill", bad), ("r1.canary", v1)):
        eps = state["episodes"][phase]
        assert {e["robot"] for e in eps} == {"sim-arm-0", "sim-arm-1"} and len(eps) >= 6
        for e in eps:
            ep = store.open(e["episode_id"])
            pol = np.flatnonzero(ep.action_source == ActionSource.POLICY)
            assert {ep.policy_version(int(t)) for t in pol} <= {canary_version if e["robot"] == "sim-arm-0" else v0}
    for e in state["episodes"]["r1.eval"]:  # evaluation: what the gate left the fleet on
        ep = store.open(e["episode_id"])
        pol = np.flatnonzero(ep.action_source == ActionSource.POLICY)
        assert len(pol) > 0 and {ep.policy_version(int(t)) for t in pol} == {deployed}
    # what the user sees: the round table and the report
    assert [r["round"] for r in state["records"]] == [0, 1]
    r1 = state["records"][1]
    assert r1["robot_versions"] == {"sim-arm-0": deployed, "sim-arm-1": deployed} and r1["evaluation_flagged"] == 2 * EVALS
    # return on human effort: the round's collected successes per minute of correction (plus one); a small
    # round's collection may succeed nowhere, so the figure is checked against the episodes, not for a sign
    col_successes = sum(e["success"] for e in state["episodes"]["r1.collect"])  # as the stations saw them
    assert round(r1["collected_success_rate"] * r1["collected_episodes"]) == col_successes
    assert r1["takeovers_per_robot_hour"] > 0 and r1["human_minutes"] > 0
    assert r1["return_on_human_effort"] == pytest.approx(col_successes / (1 + r1["human_minutes"])), r1
    # mistake to takeover, where known: the corrective teleoperator's station recorded each takeover's mistake
    # (when its condition first held) with the episode; the catalog times it to the recorded takeover
    assert 0 < r1["takeovers_mistake_known"] <= r1["takeovers"], r1
    assert 0 < r1["mistake_to_takeover_s_median"] and 0 < r1["mistake_to_takeover_s_mean"] < 10, r1
    noted = [ev for c in collected for ev in c.info.extra.get("events", []) if ev["kind"] == "mistake"]
    assert len(noted) >= r1["takeovers_mistake_known"] and {ev["why"] for ev in noted} <= {"deviation", "stall"}
    assert all(0 <= ev["tick"] < len(c) for c in collected for ev in c.info.extra.get("events", []))
    assert [g["status"] for g in r1["gates"]] == ["failed", real["status"]]
    results = json.loads((out / "results.json").read_text())
    assert [g["id"] for g in results["gate_decisions"]] == [drill["id"], real["id"]]
    assert results["return_on_human_effort"][0] is None and results["takeovers_per_robot_hour"][1] > 0
    assert results["mistake_to_takeover_s"][1]["known"] == r1["takeovers_mistake_known"]
    report = (out / "report.html").read_text()
    assert "Per round" in report and v1 in report and (out / "plots" / "rounds.png").stat().st_size > 1000
    assert "Canary gates" in report and "(drill)" in report and "never selected for training" in report
    assert "mistake → takeover" in report and f"({r1['takeovers_mistake_known']}/{r1['takeovers']})" in report


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("policy,policy_type,rounds", [("act", "lerobot:act", 1), ("smolvla-tiny", "lerobot:smolvla", 0)])
def test_image_policy_round_through_the_real_stack(tmp_path, policy, policy_type, rounds):
    """A LeRobot image policy through the same processes, at the smallest sizes: the arm renders its
    camera, the bridge records it with every tick, the worker trains the backbone on it (ACT: the
    first fit, then a RECAP round with a value function on the camera too; SmolVLA: the first fit),
    the API registers each version under its type, the inference server serves it and the robot
    runs its chunks (canary, then the fleet)."""
    out = tmp_path / "demo_out"
    cmd = [sys.executable, "-m", "data.cli_root", "demo", "--quick", "--policy", policy, "--robots", "1",
           "--rounds", str(rounds), "--camera", "48x64", "--out", str(out),
           "--ros-domain", str(random.randint(100, 200)), "--no-live"]
    for s in ("demos_per_robot=2", "collect_per_robot=1", "eval_per_robot=1", "canary_episodes=1", "max_steps=50",
              "policy.steps=8", "value.steps=8"):
        cmd += ["--set", s]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert "Traceback" not in proc.stdout
    state = json.loads((out / "state.json").read_text())
    versions = [state["versions"][str(r)] for r in range(rounds + 1)]
    # the API's version listing (as the demo fetched it for its report): every version of that type
    registered = {v["id"]: v for v in json.loads((out / "results.json").read_text())["versions"]}
    assert [registered[v]["policy_type"] for v in versions] == [policy_type] * (rounds + 1)
    assert [registered[v]["parent_version"] for v in versions] == [None] + versions[:-1]
    for run in state["runs"].values():  # the artifact the inference server loaded names the same type
        config = json.loads((out / "home" / "runs" / run / "policy" / "config.json").read_text())
        assert config["type"] == policy_type and config["cameras"] == {"front": [3, 48, 64]}
    # every recorded episode carries the camera, one rendered frame per tick
    store = EpisodeStore(out / "home" / "store")
    for phase, eps in state["episodes"].items():
        for e in eps:
            ep = store.open(e["episode_id"])
            frames = ep.images("front")
            assert ep.cameras == ["front"] and frames.shape == (len(ep), 48, 64, 3), phase
            assert frames.std() > 10 and np.abs(np.diff(frames.astype(np.int16), axis=0)).max() > 0, phase
    # the robot ran the served version's chunks: collection on the previous version, evaluation on the new
    # (one robot: no rest of the fleet to gate a canary against, so the version goes to the fleet directly)
    assert not any(p.endswith(".canary") for p in state["episodes"]) and state["gates"] == []
    runs_on = {"r0.eval": versions[0]} | {p: versions[r - (p == f"r{r}.collect")]
                                          for r in range(1, rounds + 1) for p in (f"r{r}.collect", f"r{r}.eval")}
    for phase, version in runs_on.items():
        for e in state["episodes"][phase]:
            ep = store.open(e["episode_id"])
            pol = np.flatnonzero(ep.action_source == ActionSource.POLICY)
            assert len(pol) > 0 and {ep.policy_version(int(t)) for t in pol} == {version}, phase
    for f in (out / "logs").glob("*.log"):
        bad = [ln for ln in f.read_text(errors="replace").splitlines() if any(m in ln for m in ERROR_MARKS)]
        assert not bad, f"{f.name}: {bad[:5]}"
