"""Training runs through the API and a real RQ worker process: progress, logs, artifacts, the
version registered with lineage; a worker killed with SIGKILL mid-job -> the job is retried, resumes
from its checkpoint and registers exactly one version; cancelling a queued run."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from data.schema import Outcome
from data.store import EpisodeStore
from tests.store.helpers import T0, record

# The crash test kills its run past the policy's first checkpoint (fit's checkpoint_every: 500 steps),
# by a worker whose job counts as abandoned 20 s after its last heartbeat (70 s by default).
CHECKPOINT_EVERY = 500
ABANDON_S = "20"
RECIPE = {"value": {"steps": 100, "hidden": 32, "ensemble": 2},
          "policy": {"steps": 2 * CHECKPOINT_EVERY, "hidden": 32, "chunk": 4}, "recap": {"advantage_horizon": 5}}


def _episodes(stack, n: int = 8) -> None:
    store = EpisodeStore(stack.settings.store_root)
    with stack.client("robot") as c:
        for i in range(n):
            ep, _ = record(store, robot="robot-0", cameras=0, ticks=30, corrections=range(10, 14) if i % 2 else range(0),
                           outcome=Outcome.SUCCESS if i % 3 else Outcome.FAILURE, start=T0 + i * 10**12)
            assert c.post("/v1/episodes/register", json={"episode_id": ep.episode_id}).status_code == 200


def _wait_run(stack, run_id: str, pred, timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    with stack.client("researcher") as c:
        while time.monotonic() < deadline:
            run = c.get(f"/v1/runs/{run_id}").json()
            if pred(run):
                return run
            time.sleep(0.1)
    raise AssertionError(f"run never reached the state: {run}")


def _kill_tree(pid: int) -> None:
    """SIGKILL a worker and its work horse at once, as a power loss would."""
    procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    for p in procs:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    psutil.wait_procs(procs, timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_worker_sigkill_mid_job_registers_exactly_one_version(stack):
    _episodes(stack)
    with stack.client("researcher") as c:
        r = c.post("/v1/runs", json={"method": "recap", "selection": {"robot": ["robot-0"]}, "recipe": RECIPE})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
    w1 = stack.start_worker("worker-1", RECAP_WORKER_ABANDON_S=ABANDON_S, OMP_NUM_THREADS="1")  # a small MLP
    # progress 0.4 + 0.6 x the policy's share of its steps: past 0.7, the step-500 checkpoint is written
    mid = _wait_run(stack, run_id, lambda run: run["phase"] == "policy" and run["progress"] > 0.7)
    assert mid["status"] == "running" and mid["attempts"] == 1
    _kill_tree(w1.popen.pid)
    assert _wait_run(stack, run_id, lambda run: True)["status"] == "running"  # nobody left to say otherwise
    checkpoint = stack.settings.runs_dir / run_id / "checkpoints" / "policy" / "meta.json"
    assert json.loads(checkpoint.read_text())["step"] == CHECKPOINT_EVERY
    # finds the job abandoned (its heartbeat expired) and retries it
    stack.start_worker("worker-2", RECAP_WORKER_ABANDON_S=ABANDON_S, OMP_NUM_THREADS="1")
    resumed = _wait_run(stack, run_id, lambda run: run["attempts"] == 2 and run["phase"] == "policy")
    assert resumed["progress"] >= 0.7, resumed  # the policy resumed at its checkpoint (0.4 had it started over)
    done = _wait_run(stack, run_id, lambda run: run["status"] in ("finished", "failed"), timeout=400)
    assert done["status"] == "finished", done
    assert done["attempts"] == 2 and done["version_id"] == "v1"
    with stack.client("researcher") as c:
        versions = c.get("/v1/versions").json()
        assert [v["run_id"] for v in versions] == [run_id]  # exactly one registered version
        v = versions[0]
        assert v["lineage"]["run"] == run_id and v["lineage"]["method"] == "recap"
        assert v["lineage"]["selection"] == {"robot": ["robot-0"]} and v["lineage"]["episodes"] == 8
        assert v["metrics"]["positive_rate"] > 0
        logs = c.get(f"/v1/runs/{run_id}/logs").text
        assert "attempt 1" in logs and "attempt 2" in logs and "registered policy version v1" in logs
        files = {f["path"] for f in c.get(f"/v1/runs/{run_id}/artifacts").json()}
        assert {"policy/model.safetensors", "policy/manifest.json", "value/model.safetensors", "curves.png"} <= files
        png = c.get(f"/v1/runs/{run_id}/curves.png")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        scalars = c.get(f"/v1/runs/{run_id}/scalars").json()  # its TensorBoard event files, read back
        assert len(scalars["value/loss"]) > 10 and len(scalars["policy/loss"]) > 10 and "metrics/positive_rate" in scalars


def test_cancel_a_queued_run_and_refuse_bad_runs(stack):
    _episodes(stack, 3)
    with stack.client("researcher") as c:
        run_id = c.post("/v1/runs", json={"method": "bc", "selection": {"robot": ["robot-0"]}}).json()["id"]
        out = c.post(f"/v1/runs/{run_id}/cancel").json()
        assert out["status"] == "cancelled"
        assert c.post(f"/v1/runs/{run_id}/cancel").status_code == 409
        for body in ({"method": "dagger"}, {"selection": {"robot": ["ghost"]}}, {"parent_version": "v99"},
                     {"seed": -1}, {"recipe": {"value": 3}}):
            r = c.post("/v1/runs", json=body)
            assert r.status_code == 422, (body, r.text)
        assert [x["status"] for x in c.get("/v1/runs").json()] == ["cancelled"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_worker_trains_each_job_data_parallel_under_torchrun(stack):
    """RECAP_TRAIN_PROCS=2: the job runs in 2 processes (gloo here, one per GPU on a GPU box); rank 0
    streams progress; the worker registers the one artifact."""
    _episodes(stack)
    stack.start_worker("worker-ddp", RECAP_TRAIN_PROCS="2", OMP_NUM_THREADS="1")
    small = {**RECIPE, "value": {**RECIPE["value"], "steps": 40}, "policy": {**RECIPE["policy"], "steps": 40}}
    with stack.client("researcher") as c:
        r = c.post("/v1/runs", json={"method": "recap", "selection": {"robot": ["robot-0"]}, "recipe": small})
        assert r.status_code == 202, r.text
        run_id = r.json()["id"]
    seen = _wait_run(stack, run_id, lambda run: run["phase"] in ("value", "policy") and run["progress"] > 0)
    assert seen["status"] == "running"
    done = _wait_run(stack, run_id, lambda run: run["status"] in ("finished", "failed"), timeout=400)
    assert done["status"] == "finished", done
    with stack.client("researcher") as c:
        v = c.get(f"/v1/versions/{done['version_id']}").json()
        assert v["run_id"] == run_id and v["metrics"]["world_size"] == 2
        assert "2 processes under torchrun" in c.get(f"/v1/runs/{run_id}/logs").text
