"""The canary gate: its decision rule on constructed outcome sequences (exact probabilities checked
against sampling), and the gate in the control plane: a worse canary rolled back and a good one
widened through the API, with the decision, its figures and the audit row; two looks at once decide
once; a deployment made meanwhile supersedes the gate."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from data.catalog import Catalog
from data.schema import ActionSource, Outcome
from data.store import EpisodeStore
from services.canary import GateEpisode, GateKeeper, judge, p_beta_below, p_rate_above
from tests.services.conftest import policy_artifact
from tests.store.helpers import PERIOD, T0, SyntheticFrames, small_features

FPS = 30


def ep(success: bool, takeovers: int = 0, ticks: int = 300, held: bool = False) -> GateEpisode:
    return GateEpisode(success=success and not held, takeovers=takeovers, ticks=ticks, correction_ticks=10 * takeovers,
                       fps=FPS, held=held)


def seq(pattern: str, **kw) -> list[GateEpisode]:
    """'SSF.H' : success, failure, hold (a success whose arm held: counted as failure)."""
    return [ep(c == "S", held=c == "H", **kw) for c in pattern]


@pytest.mark.parametrize("a,b", [((0, 4, 1, 3), None), ((3, 2, 1, 6), None), ((5, 5, 5, 5), None), ((0, 0, 7, 1), None)])
def test_beta_comparison_is_exact(a, b):
    rng = np.random.default_rng(0)
    s_a, f_a, s_b, f_b = a
    mc = np.mean(rng.beta(1 + s_a, 1 + f_a, 400_000) < rng.beta(1 + s_b, 1 + f_b, 400_000))
    assert p_beta_below(*a) == pytest.approx(mc, abs=0.004)


@pytest.mark.parametrize("k_a,h_a,k_b,h_b", [(0, 1.0, 0, 1.0), (8, 0.1, 1, 0.1), (2, 0.5, 6, 0.4), (0, 0.02, 3, 0.3)])
def test_rate_comparison_is_exact(k_a, h_a, k_b, h_b):
    rng = np.random.default_rng(1)
    mc = np.mean(rng.gamma(0.5 + k_a, 1 / h_a, 400_000) > rng.gamma(0.5 + k_b, 1 / h_b, 400_000))
    assert p_rate_above(k_a, h_a, k_b, h_b) == pytest.approx(mc, abs=0.004)


def test_the_rule_on_constructed_outcome_sequences():
    # too few episodes on either side: the gate says what it waits for
    v = judge(seq("FF"), seq("SSSS"), min_episodes=4, unlabelled=1)
    assert v.decision == "wait" and "2 of 4" in v.reason and "1 await an outcome label" in v.reason
    v = judge(seq("SSSS"), seq("SS"), min_episodes=4)
    assert v.decision == "wait" and "rest of the fleet has 2 of 4" in v.reason
    # as good as the fleet: widened
    v = judge(seq("SSFS"), seq("SFSS"), min_episodes=4)
    assert v.decision == "pass" and v.figures["p_success_worse"] == pytest.approx(0.5)
    # clearly worse on success: rolled back, with the probability in the figures
    v = judge(seq("FFFFFF"), seq("SSSFSS"), min_episodes=6)
    assert v.decision == "fail" and v.figures["p_success_worse"] > 0.99 and "rolled back" in v.reason
    # slightly worse on a small sample: not enough evidence at 0.8, enough at a laxer threshold
    assert judge(seq("SFFS"), seq("SSFS"), min_episodes=4).decision == "pass"
    assert judge(seq("SFFS"), seq("SSFS"), min_episodes=4, threshold=0.6).decision == "fail"
    # the arm held (deadline flags, inference outage): those episodes count as failures
    v = judge(seq("HHHHS"), seq("SSSSS"), min_episodes=5)
    assert v.decision == "fail" and v.figures["canary"]["held_episodes"] == 4 and v.figures["canary"]["successes"] == 1
    # same successes, but the teleoperator had to take over far more often: rolled back
    v = judge(seq("SSSS", takeovers=3), seq("SSSS", takeovers=0), min_episodes=4)
    assert v.decision == "fail" and v.figures["p_takeovers_worse"] > 0.9 and v.figures["p_success_worse"] == 0.5
    assert v.figures["canary"]["takeovers_per_robot_hour"] == pytest.approx(12 / (4 * 300 / FPS / 3600))
    # no takeovers anywhere says nothing against the canary
    v = judge(seq("SSSS"), seq("SSSS"), min_episodes=4)
    assert v.decision == "pass" and v.figures["p_takeovers_worse"] == pytest.approx(0.5)
    # a fleet that fails everything cannot show the canary worse, but a version with no success is not widened
    v = judge(seq("FFF", takeovers=2), seq("FFF", takeovers=2), min_episodes=3)
    assert v.decision == "fail" and "no success" in v.reason and v.figures["p_success_worse"] == pytest.approx(0.5)
    assert judge(seq("FSF"), seq("FFF"), min_episodes=3).decision == "pass"


def _episode(store: EpisodeStore, robot: str, version: str, outcome: str, start: int, holds: int = 0,
             takeovers: int = 0):
    feats = small_features(0)
    frames = SyntheticFrames(feats, n_frames=2)
    w = store.new_episode(robot_id=robot, task_id="push", features=feats, fps=FPS, instruction="push it",
                          start_time_ns=start, fsync=False)
    corrections = {t for k in range(takeovers) for t in range(5 + 4 * k, 7 + 4 * k)}
    for t in range(30):
        src = (ActionSource.HOLD if t >= 30 - holds else ActionSource.CORRECTION if t in corrections
               else ActionSource.POLICY)
        w.append(frames.tick(t, start + t * PERIOD, src, version if src == ActionSource.POLICY else None))
    return w.commit(Outcome(outcome), "station").episode_id


def _register_all(stack, store: EpisodeStore, ids: list[str]) -> None:
    with stack.client("teleoperator") as c:
        for eid in ids:
            assert c.post("/v1/episodes/register", json={"episode_id": eid}).status_code == 200


def test_gated_canary_through_the_api_rolls_back_a_worse_version_and_widens_a_good_one(stack, tmp_path):
    store = EpisodeStore(stack.settings.store_root)
    with stack.client("researcher") as c:
        v1, v2, v3 = (c.post("/v1/versions", json={"artifact_dir": str(policy_artifact(tmp_path / f"a{i}", i))}).json()["id"]
                      for i in (1, 2, 3))
    with stack.client("operator") as op:
        assert op.post("/v1/robots", json={"id": "robot-1"}).status_code == 201
        # a gate needs something to compare with, and a canary on one robot
        r = op.post("/v1/deployments", json={"version": v2, "target_kind": "robot", "target": "robot-0",
                                             "stage": "canary", "gate": {"min_episodes": 3}})
        assert r.status_code == 422 and "deploy to the fleet first" in r.json()["detail"]
        r = op.post("/v1/deployments", json={"version": v2, "gate": {"min_episodes": 3}})
        assert r.status_code == 422 and "one robot" in r.json()["detail"]
        assert op.post("/v1/deployments", json={"version": v2, "target_kind": "robot", "target": "robot-0",
                                                "gate": {"min_episodes": 0}}).status_code == 422
        assert op.post("/v1/deployments", json={"version": v1}).status_code == 201
        r = op.post("/v1/deployments", json={"version": v2, "target_kind": "robot", "target": "robot-0",
                                             "stage": "canary", "gate": {"min_episodes": 3, "threshold": 0.8}})
        assert r.status_code == 201 and r.json()["gate_id"] == 1
        [g] = op.get("/v1/deployments/gates").json()
        assert g["status"] == "open" and g["baseline_version"] == v1 and "cannot decide yet" in g["reason"]
    t = T0 + 10**18 // 2  # after the deployments (the gate's window starts at the canary's deployment)
    # the canary fails every episode, its arm held in one; the fleet's robot succeeds
    canary = [_episode(store, "robot-0", v2, "failure", t + i * 10**10, holds=3 * (i == 0)) for i in range(3)]
    fleet = [_episode(store, "robot-1", v1, "success", t + i * 10**10 + 1) for i in range(3)]
    _register_all(stack, store, canary[:2] + fleet)
    with stack.client("operator") as op:
        [g] = op.get("/v1/deployments/gates").json()
        assert g["status"] == "open" and "the canary has 2 of 3 episodes" in g["reason"]
        _register_all(stack, store, canary[2:])  # the third: the gate decides in this request
        [g] = op.get("/v1/deployments/gates").json()
        assert g["status"] == "failed" and g["figures"]["canary"]["held_episodes"] == 1
        assert g["figures"]["p_success_worse"] > 0.9 and g["reason"].startswith("rolled back")
        assert op.get("/v1/deployments/current").json() == {"robot-0": v1, "robot-1": v1}
        newest = op.get("/v1/deployments").json()[0]
        assert (newest["id"], newest["stage"], newest["created_by"], newest["version_id"]) == (
            g["decision_deployment_id"], "rollback", "canary-gate", v1)
        # a good canary: widened to the fleet
        r = op.post("/v1/deployments", json={"version": v3, "target_kind": "robot", "target": "robot-0",
                                             "stage": "canary", "gate": {"min_episodes": 2}})
        assert r.status_code == 201
    t2 = t + 10**12
    good = [_episode(store, "robot-0", v3, "success", t2 + i * 10**10) for i in range(2)]
    fleet2 = [_episode(store, "robot-1", v1, o, t2 + i * 10**10 + 1, takeovers=1) for i, o in enumerate(("success", "failure"))]
    _register_all(stack, store, fleet2 + good)
    with stack.client("admin") as adm:
        g2 = adm.get("/v1/deployments/gates").json()[0]
        assert g2["status"] == "passed" and g2["figures"]["fleet"]["takeovers"] == 2, g2
        assert adm.get("/v1/deployments/current").json() == {"robot-0": v3, "robot-1": v3}
        audit = [a for a in adm.get("/v1/audit").json() if a["actor"] == "canary-gate"]
        assert [(a["action"], a["detail"]["status"]) for a in audit] == [("GATE canary #2", "passed"),
                                                                        ("GATE canary #1", "failed")]
    # `recap fleet history`: the decisions and their figures
    env = {**__import__("os").environ, "RECAP_API_URL": stack.api.url, "RECAP_TOKEN": stack.tokens["operator"]}
    out = subprocess.run([sys.executable, "-m", "data.cli_root", "fleet", "history"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"gate #1   failed     {v2} on robot-0 vs fleet {v1}" in out.stdout and "success 0/3 vs 3/3" in out.stdout
    assert "gate #2   passed" in out.stdout and "[gate #1]" in out.stdout


def test_two_looks_at_once_decide_once_and_a_newer_deployment_supersedes(tmp_path):
    from services.control import ControlDB
    from services.control.models import Deployment, Robot
    from services.registry import deploy, register_version

    db = ControlDB(f"sqlite:///{tmp_path / 'control.sqlite'}")
    store = EpisodeStore(tmp_path / "store")
    catalog = Catalog.for_store(store)
    with db.session() as s:
        for r in ("a", "b"):
            s.add(Robot(id=r, group="default", registered_at_ns=1, info={}))
        v1 = register_version(s, policy_artifact(tmp_path / "p1", 1), created_by="t").id
        v2 = register_version(s, policy_artifact(tmp_path / "p2", 2), created_by="t").id
        deploy(s, v1, "fleet", "*", stage="deploy", created_by="t")
        deploy(s, v2, "robot", "a", stage="canary", created_by="t", gate={"min_episodes": 4, "threshold": 0.8})
    t = T0 + 10**18 // 2
    for i in range(4):
        catalog.register(store.open(_episode(store, "a", v2, "failure", t + i * 10**10)))
        catalog.register(store.open(_episode(store, "b", v1, "success", t + i * 10**10 + 1)))
    keepers = [GateKeeper(db, catalog) for _ in range(4)]
    results, barrier = [], threading.Barrier(4)

    def look(k):
        barrier.wait()
        results.append(k.look())

    threads = [threading.Thread(target=look, args=(k,)) for k in keepers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(len(r) for r in results) == [0, 0, 0, 1]
    with db.session() as s:
        stages = [d.stage for d in s.query(Deployment).order_by(Deployment.id)]
        assert stages == ["deploy", "canary", "rollback"]
        # a new gated canary, then an operator deploys to the fleet before it decides: superseded
        deploy(s, v2, "robot", "a", stage="canary", created_by="t", gate={"min_episodes": 50, "threshold": 0.8})
        deploy(s, v2, "fleet", "*", stage="deploy", created_by="t")
    [g] = keepers[0].look()
    assert g["status"] == "superseded" and "superseded by deployment #5" in g["reason"]
    with db.session() as s:
        assert [d.stage for d in s.query(Deployment).order_by(Deployment.id)][-1] == "deploy"  # nothing undone
    db.close()
    catalog.close()
