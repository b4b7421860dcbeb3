"""The control plane and the catalog on a real PostgreSQL server (what a fleet runs), through the
API and a worker: migrations, episode registration and queries, labels, a training run that reads
its selection from the catalog, version registration, canary / fleet / rollback, the audit log."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, inspect

from data.schema import Outcome
from data.store import EpisodeStore
from tests.services.conftest import policy_artifact, running_stack
from tests.store.helpers import T0, record


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_api_worker_and_catalog_on_postgresql(tmp_path, postgres):
    with running_stack(tmp_path, **postgres) as stack:
        for url, table in ((postgres["control_url"], "policy_versions"), (postgres["catalog_url"], "episodes")):
            eng = create_engine(url)
            assert table in inspect(eng).get_table_names()  # Alembic migrated the PostgreSQL schemas
            eng.dispose()
        store = EpisodeStore(stack.settings.store_root)
        ids = []
        with stack.client("robot") as c:
            for i in range(6):
                ep, _ = record(store, robot="robot-0", cameras=0, ticks=30, corrections=range(5, 9) if i % 2 else range(0),
                               outcome=Outcome.SUCCESS if i % 3 else Outcome.FAILURE, start=T0 + i * 10**12)
                r = c.post("/v1/episodes/register", json={"episode_id": ep.episode_id})
                assert r.status_code == 200, r.text
                ids.append(ep.episode_id)
        with stack.client("teleoperator") as c:
            assert c.post(f"/v1/episodes/{ids[0]}/label", json={"outcome": "success"}).json()["outcome"] == "success"
            failures = c.get("/v1/episodes", params={"outcome": "failure", "robot": "robot-0"}).json()
            assert c.get("/v1/episodes/%00/annotations").status_code == 400  # a NUL never reaches a text column
            assert {e["id"] for e in failures} == {ids[3]}
            assert c.get("/v1/episodes", params={"since_ns": T0 + 3 * 10**12}).json()[0]["id"] == ids[3]
        stack.start_worker("worker-pg")
        recipe = {"value": {"steps": 30, "hidden": 16}, "policy": {"steps": 30, "hidden": 16, "chunk": 4},
                  "recap": {"advantage_horizon": 5}}
        with stack.client("researcher") as c:
            r = c.post("/v1/runs", json={"method": "recap", "selection": {"robot": ["robot-0"]}, "recipe": recipe})
            assert r.status_code == 202, r.text
            run_id = r.json()["id"]
            deadline = time.monotonic() + 300
            while (run := c.get(f"/v1/runs/{run_id}").json())["status"] not in ("finished", "failed"):
                assert time.monotonic() < deadline, run
                time.sleep(0.5)
            assert run["status"] == "finished", run
            v1 = c.get(f"/v1/versions/{run['version_id']}").json()
            assert v1["lineage"]["episodes"] == 6 and v1["run_id"] == run_id
            v2 = c.post("/v1/versions", json={"artifact_dir": str(policy_artifact(tmp_path / "hand", 3)),
                                              "parent_version": v1["id"]})
            assert v2.status_code == 201, v2.text
            v2 = v2.json()["id"]
        stack.robot_token("robot-1")
        with stack.client("operator") as c:
            assert c.post("/v1/deployments", json={"version": v1["id"]}).status_code == 201
            assert c.post("/v1/deployments", json={"version": v2, "target_kind": "robot", "target": "robot-1",
                                                   "stage": "canary"}).status_code == 201
            assert c.get("/v1/deployments/current").json() == {"robot-0": v1["id"], "robot-1": v2}
            assert c.post("/v1/deployments/rollback", json={"target_kind": "robot", "target": "robot-1"}).status_code == 201
            assert c.get("/v1/deployments/current").json() == {"robot-0": v1["id"], "robot-1": v1["id"]}
        with stack.client("admin") as c:
            audit = c.get("/v1/audit", params={"limit": 1000}).json()
            assert {"POST /v1/deployments/rollback", "POST /v1/runs", "POST /v1/episodes/{episode_id}/label"} \
                <= {a["action"] for a in audit}
