"""The episode shipper against the real API process (uvicorn) and Redis: a robot's committed episodes
reach the central store verified, exactly once, through kill -9 of the shipper and of the API, an
outage, a half-sent episode, damaged chunks and a second ship; local copies go only once confirmed
and past retention. The same faults, 50+ kill -9 trials and the throughput: bench/ship.py."""

from __future__ import annotations

import json
import random
import time

import pytest

from data.store import EpisodeStore
from data.transfer import EpisodeTar
from robot_bridge.shipper import EpisodeShipper, backlog, ledger_dir
from tests.services.ship_faults import (
    RobotSide,
    api_kill_trial,
    census,
    config,
    corrupt_trial,
    half_sent_trial,
    kill9_trial,
    shipper_process,
    ship_until_done,
    twice_trial,
)


def _clean(robot, stack, what: str):
    c = census(robot, stack.settings.store_root, stack.api.url, stack.tokens["admin"])
    assert c.clean, (what, c)
    return c


@pytest.mark.slow  # ~40 s on two idle cores, minutes on loaded ones (each shipper process imports zarr)
def test_shipping_survives_kill9_outage_damage_and_repeats(stack, tmp_path):
    robot = RobotSide(tmp_path / "robot")
    rng = random.Random(7)
    robot.record(2)
    # kill -9 of the shipper process at random moments: starting, hashing, mid-chunk, committing, deleting
    flowing = 0
    for i in range(4):
        flowing += kill9_trial(rng, robot, stack, f"shipper-{i}", rate=100_000, window=(0.1, 2.5))["mid_transfer"]
        _clean(robot, stack, f"kill -9 #{i}")
    assert flowing >= 1  # at least one kill landed part-way through an episode
    # kill -9 of the receiving API process while chunks are in flight; then an outage of 2 s
    s = api_kill_trial(rng, robot, stack, rate=300_000)
    assert not s.pending(), s.last_error
    _clean(robot, stack, "API kill -9")
    s = api_kill_trial(rng, robot, stack, rate=300_000, down_s=2.0)
    assert not s.pending() and s.counters.deferrals >= 1, s.counters
    _clean(robot, stack, "outage")
    # half-sent: three chunks, a chunk torn mid-body, the link down; a new shipper resumes, sends the rest only
    first, second, size = half_sent_trial(robot, stack)
    assert first.counters.bytes_sent == 3 * (16 << 10) and second.counters.resumed == 1, second.counters
    assert second.counters.bytes_sent == size - 3 * (16 << 10)
    _clean(robot, stack, "half-sent")
    # bit flips in transit: each damaged chunk refused and sent again; nothing damaged accepted
    s = corrupt_trial(robot, stack, flips=3)
    assert s.counters.chunks_refused == 3 and s.counters.shipped == 1, s.counters
    _clean(robot, stack, "damaged chunks")
    # the same episodes shipped again, by two shippers at once, with the robot's ledger lost
    shippers = twice_trial(robot, stack)
    assert sum(s.counters.already_there for s in shippers) >= len(EpisodeStore(robot.root).episode_ids()) - 1
    # a last shipper process finishes what the killed ones left; retention keeps the 2 newest
    p = shipper_process("shipper-last", robot, stack.api.url, stack.tokens["robot"], stack.logs, once=True)
    assert p.popen.wait(120) == 0, p.log_text()[-3000:]
    c = _clean(robot, stack, "final")
    assert c.central == len(robot.expected) and c.local == 2, c
    assert backlog(robot.root)["episodes"] == 0
    shipper_log = "".join((stack.logs / f"shipper-{i}.log").read_text() for i in range(4))
    assert "Traceback" not in shipper_log.replace("KeyboardInterrupt", "")


def test_retention_reserve_and_hostile_ingest(stack, tmp_path):
    robot = RobotSide(tmp_path / "robot")
    ids = sorted(robot.record(3))  # oldest first, as the store lists them
    api, token = stack.api.url, stack.tokens["robot"]
    # retention: confirmed copies younger than keep_hours stay; past it only the keep_newest remain
    s = EpisodeShipper(config(robot, api, token, keep_newest=1, keep_hours=1.0))
    ship_until_done(s)
    assert EpisodeStore(robot.root).episode_ids() == ids and s.counters.shipped == 3
    s = EpisodeShipper(config(robot, api, token, keep_newest=1, keep_hours=0.0))
    s.run_once()
    assert EpisodeStore(robot.root).episode_ids() == ids[-1:] and s.counters.deleted == 2
    s.stop()
    # a robot ships its own episodes only; everything hostile is a 4xx naming why, never a 500
    tar = EpisodeTar(EpisodeStore(robot.root).episode_dir(ids[-1]))
    other = ids[-1].replace("robot-0", "robot-9")
    sha = robot.expected[ids[-1]]
    with stack.client("robot") as c, stack.client("teleoperator") as tele:
        assert tele.post("/v1/episodes/ingest", json={"episode_id": ids[-1], "sha256": sha, "size": 9}).status_code == 403
        r = c.post("/v1/episodes/ingest", json={"episode_id": other, "sha256": sha, "size": tar.size})
        assert r.status_code == 403 and "own episodes" in r.text
        r = c.post("/v1/episodes/ingest", json={"episode_id": ids[-1], "sha256": sha, "size": tar.size})
        assert r.status_code == 200 and r.json()["status"] == "done"  # a second ship: a no-op
        for body, code in [({"episode_id": "../../etc", "sha256": sha, "size": 10}, 422),
                           ({"episode_id": ids[-1], "sha256": "x" * 64, "size": 10}, 422),
                           ({"episode_id": ids[-1], "sha256": sha, "size": -1}, 422),
                           ({"episode_id": ids[-1], "sha256": "a" * 64, "size": 1 << 40}, 413)]:
            r = c.post("/v1/episodes/ingest", json=body)
            assert r.status_code == code and r.json()["detail"], (body, r.text)
        # a new episode of this robot: a chunk before opening, at the wrong offset, too large, damaged
        (new,) = robot.record(1)
        t = EpisodeTar(EpisodeStore(robot.root).episode_dir(new))
        nsha, data = robot.expected[new], t.read(0, 1000)
        from robot_bridge.shipper import _sha256

        r = c.put(f"/v1/episodes/ingest/{new}/{nsha}", params={"offset": 0}, content=data,
                  headers={"X-Chunk-Sha256": _sha256(data)})
        assert r.status_code == 422 and "open it first" in r.text
        assert c.post("/v1/episodes/ingest", json={"episode_id": new, "sha256": nsha, "size": t.size}).json()["offset"] == 0
        r = c.put(f"/v1/episodes/ingest/{new}/{nsha}", params={"offset": 5}, content=data,
                  headers={"X-Chunk-Sha256": _sha256(data)})
        assert r.status_code == 409 and r.headers["X-Upload-Offset"] == "0"
        r = c.put(f"/v1/episodes/ingest/{new}/{nsha}", params={"offset": 0}, content=bytes(17 << 20),
                  headers={"X-Chunk-Sha256": "0" * 64})
        assert r.status_code == 413
        r = c.put(f"/v1/episodes/ingest/{new}/{nsha}", params={"offset": 0}, content=data,
                  headers={"X-Chunk-Sha256": "0" * 64})
        assert r.status_code == 422 and "sha256" in r.text
        r = c.post(f"/v1/episodes/ingest/{new}/{nsha}/commit", json={})
        assert r.status_code == 422 and "incomplete" in r.text
        # a whole whose bytes are not the announced sha256: discarded, never adopted
        fake = "f" * 64
        assert c.post("/v1/episodes/ingest", json={"episode_id": new, "sha256": fake, "size": t.size}).status_code == 200
        for off in range(0, t.size, 1 << 20):
            d = t.read(off, 1 << 20)
            assert c.put(f"/v1/episodes/ingest/{new}/{fake}", params={"offset": off}, content=d,
                         headers={"X-Chunk-Sha256": _sha256(d)}).status_code == 200
        r = c.post(f"/v1/episodes/ingest/{new}/{fake}/commit", json={})
        assert r.status_code == 422 and "whole upload" in r.text
        assert not EpisodeStore(stack.settings.store_root).is_committed(new)
    # the robot's ledger and backlog figure
    b = backlog(robot.root)
    assert b["episodes"] == 1 and b["bytes"] > 0 and b["oldest"] == new
    assert json.loads((ledger_dir(robot.root) / f"{ids[-1]}.json").read_text())["confirmed_at_ns"] > 0
