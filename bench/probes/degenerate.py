"""Probe: degenerate episodes against the store, the catalog and real training runs (the API and an
RQ worker). Episodes of 0 and 1 tick go through the writer (which must refuse them); empty, one-tick,
NaN, inf and short-array episodes are written straight into the stack's store as an older store holds
them and registered. Then training runs: the whole robot (good and degenerate episodes), each
degenerate episode alone, all of them together. A run crashed when it failed with an error that does
not name its episodes, never ended, or finished without listing what it left out."""

from __future__ import annotations

import time
from pathlib import Path

from data.schema import Outcome
from data.store import DegenerateEpisodeError, EpisodeStore
from data.synthetic import SyntheticFrames
from tests.store.generators import DEGENERATE_KINDS, write_degenerate
from tests.store.helpers import PERIOD, T0, record, small_features

ROBOT = "robot-0"
RECIPE = {"value": {"steps": 20, "hidden": 16, "ensemble": 2}, "policy": {"steps": 20, "hidden": 16, "chunk": 4},
          "recap": {"advantage_horizon": 5}}
RUN_TIMEOUT_S = 300


def _refused_by_writer(store: EpisodeStore, ticks: int) -> bool:
    feats = small_features(0)
    frames = SyntheticFrames(feats, n_frames=2)
    w = store.new_episode(robot_id=ROBOT, task_id="push", features=feats, fps=30, fsync=False)
    for t in range(ticks):
        w.append(frames.tick(t, T0 + t * PERIOD))
    try:
        w.commit(Outcome.FAILURE, "probe")
    except DegenerateEpisodeError:
        return w.episode_id not in store.episode_ids() + store.in_flight_ids()
    return False


def _wait(c, run_id: str) -> dict | None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        run = c.get(f"/v1/runs/{run_id}").json()
        if run["status"] in ("finished", "failed", "cancelled"):
            return run
        time.sleep(0.2)
    return None


def run(stack, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    store = EpisodeStore(stack.settings.store_root)
    refused = sum(_refused_by_writer(store, n) for n in (0, 1))
    good = [record(store, robot=ROBOT, cameras=0, ticks=30, start=T0 + (100 + i) * 10**12,
                   outcome=Outcome.SUCCESS if i % 3 else Outcome.FAILURE)[0].episode_id for i in range(6)]
    bad = {write_degenerate(store, kind, robot=ROBOT, task=f"deg-{kind}".replace("_", "-"), index=i, state_dim=4,
                            action_dim=3): kind
           for i, kind in enumerate(DEGENERATE_KINDS)}
    task_of = {eid: f"deg-{kind}".replace("_", "-") for eid, kind in bad.items()}
    with stack.client("robot") as c:
        for eid in good + list(bad):
            r = c.post("/v1/episodes/register", json={"episode_id": eid})
            assert r.status_code == 200, r.text

    selections = [({"robot": [ROBOT]}, list(bad), True)]  # (selection, degenerate in it, a policy is expected)
    selections += [({"task": [task_of[eid]]}, [eid], False) for eid in bad]  # one task per degenerate episode
    selections += [({"task": sorted(task_of.values())}, list(bad), False)]
    worker = stack.start_worker("worker-degenerate")
    crashed, excluded_in_lineage, finished, stopped = 0, 0, 0, 0
    try:
        with stack.client("researcher") as c:
            for selection, degenerate, expect_policy in selections:
                r = c.post("/v1/runs", json={"method": "recap", "selection": selection, "recipe": RECIPE})
                if r.status_code != 202:
                    crashed += 1
                    continue
                run = _wait(c, r.json()["id"])
                if run is None:
                    crashed += 1
                elif run["status"] == "finished":
                    finished += 1
                    version = c.get(f"/v1/versions/{run['version_id']}").json()
                    listed = set(version.get("lineage", {}).get("excluded", {}))
                    excluded_in_lineage += len(listed & set(degenerate))
                    crashed += not set(degenerate) <= listed
                else:
                    stopped += 1
                    error = run.get("error") or ""
                    crashed += expect_policy or "Traceback" in error or not all(e in error for e in degenerate)
    finally:
        worker.stop()
        stack.extra.remove(worker)
    return {"degenerate_episodes_tried": 2 + len(bad), "degenerate_refused_at_commit": refused,
            "degenerate_training_runs": len(selections), "training_runs_finished": finished,
            "training_runs_stopped_naming_episodes": stopped, "training_runs_crashed": crashed,
            "degenerate_excluded_in_lineage": excluded_in_lineage}
