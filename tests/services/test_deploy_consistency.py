"""One source of truth for what each robot runs: the serving sequence in the control database
(SQLite and a real PostgreSQL), Redis that never stores an older state over a newer one, and real
inference servers that hold the database's state within two seconds of concurrent deploy bursts,
of a publish that was never made, and of Redis losing everything."""

from __future__ import annotations

import json
import random
import threading
import time

import numpy as np
import pytest
import redis
from sqlalchemy import select

from services.control import ControlDB, serving_sequence
from services.control.models import ApiToken, Robot
from services.launch import start_redis
from services.registry import deploy, serving_state
from services.serving_channel import STATE_KEY, publish_state, read_stamp, read_state
from tests.services.deploy_bursts import (RobotStreams, SeqMonitor, assignment_history, burst, db_state, divergences,
                                          setup_fleet, wait_converged, went_back)


def _state(epoch: str, seq: int) -> dict:
    return {"robots": {}, "fleet_version": f"v{seq}", "versions": {}, "robot_tokens": {}, "epoch": epoch, "seq": seq}


def test_redis_never_stores_or_announces_an_older_state_over_a_newer_one(tmp_path):
    server = start_redis(tmp_path / "redis")
    try:
        r = redis.Redis.from_url(server.url)
        sub = r.pubsub(ignore_subscribe_messages=True)
        sub.subscribe("ch")
        assert publish_state(r, "ch", _state("e1", 5))
        assert not publish_state(r, "ch", _state("e1", 3))  # an older read published late
        assert not publish_state(r, "ch", _state("e1", 5))
        assert read_state(r)["fleet_version"] == "v5" and read_stamp(r) == ("e1", 5)
        assert publish_state(r, "ch", _state("e2", 1))  # another database (a new epoch) replaces it
        assert read_stamp(r) == ("e2", 1)
        # many publishers at once, in random order: the stored state ends at the newest, and the
        # channel announces strictly increasing numbers
        seqs = list(range(2, 202))
        random.Random(0).shuffle(seqs)
        chunks = [seqs[i::8] for i in range(8)]

        def publisher(chunk):
            c = redis.Redis.from_url(server.url)
            for s in chunk:
                publish_state(c, "ch", _state("e2", s))

        threads = [threading.Thread(target=publisher, args=(ch,)) for ch in chunks]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert read_stamp(r) == ("e2", 201) and json.loads(r.get(STATE_KEY))["seq"] == 201
        announced = []
        deadline = time.monotonic() + 10
        while 201 not in announced and time.monotonic() < deadline:  # nothing can follow the newest
            if msg := sub.get_message(timeout=0.1):
                announced.append(json.loads(msg["data"])["seq"])
        assert announced[:2] == [5, 1] and announced[-1] == 201
        assert announced[2:] == sorted(set(announced[2:])), "an older state was announced after a newer one"
        sub.close()
    finally:
        server.stop()


def _sequence_checks(db: ControlDB) -> None:
    with db.session() as s:
        s.add(Robot(id="r-0", group="a", registered_at_ns=1, info={}))
        s.add(ApiToken(name="op", role="operator", token_sha256="o" * 64, created_at_ns=1, created_by="t"))
    with db.session() as s:
        epoch, base = serving_sequence.current(s)
    assert base == 1  # one transaction, one number
    with db.session() as s:
        s.get(Robot, "r-0").last_seen_ns = 5  # a heartbeat serves nothing new
        s.scalar(select(ApiToken).where(ApiToken.name == "op")).revoked_at_ns = 5  # nor an operator token
    with db.session() as s:
        assert serving_sequence.current(s) == (epoch, base)
        s.get(Robot, "r-0").group = "b"
    with db.session() as s:
        assert serving_sequence.current(s)[1] == base + 1
        s.add(ApiToken(name="rt", role="robot", robot_id="r-0", token_sha256="r" * 64, created_at_ns=1, created_by="t"))
    with db.session() as s:
        assert serving_sequence.current(s)[1] == base + 2
        s.delete(s.get(Robot, "r-0"))
    with db.session() as s:
        start = serving_sequence.current(s)[1]
        assert start == base + 3
    # writers that each add one robot (one number each) while a reader reads the state: numbers are
    # unique and gapless, and a state read at n holds exactly the robots of the transactions <= n
    got: list[int] = []
    bad: list[str] = []
    done = threading.Event()

    def writer(w: int):
        for i in range(10):
            with db.session() as s:
                got.append(serving_sequence.bump(s))
                s.add(Robot(id=f"w{w}-{i}", group="a", registered_at_ns=1, info={}))

    def reader():
        while not done.is_set():
            with db.session() as s:
                st = serving_state(s)
            if len(st["robots"]) != st["seq"] - start:
                bad.append(f"state {st['seq']} holds {len(st['robots'])} robots")

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    rt = threading.Thread(target=reader)
    rt.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    rt.join()
    assert sorted(got) == list(range(start + 1, start + 41))
    assert bad == []


def test_serving_sequence_serialises_changes_on_sqlite(tmp_path):
    db = ControlDB(f"sqlite:///{tmp_path / 'control.sqlite'}")
    try:
        _sequence_checks(db)
    finally:
        db.close()


@pytest.mark.slow
def test_serving_sequence_serialises_changes_on_postgresql(postgres):
    db = ControlDB(postgres["control_url"])
    try:
        _sequence_checks(db)
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_concurrent_deploy_bursts_reach_every_server_within_2s(stack, tmp_path):
    fleet = setup_fleet(stack, tmp_path, n_versions=4, n_robots=4, n_servers=2)
    rng = np.random.default_rng(7)
    heal = []
    with RobotStreams(fleet) as streams, SeqMonitor(fleet) as monitor:
        for b in range(5):
            out = burst(stack, fleet, rng, operators=4, actions=3)
            assert out["errors"] == [], out["errors"]
            assert sum(n for code, n in out["statuses"].items() if code == 201) >= 6
            waited = wait_converged(stack, fleet, 2.0 - (time.monotonic() - out["ended"]))
            assert waited is not None, (b, db_state(stack), divergences(stack, fleet))
            assert divergences(stack, fleet) == []
            heal.append(time.monotonic() - out["ended"])
        time.sleep(0.2)
    assert streams.failures == [], streams.failures[:5]
    assert all(len(a) >= 10 for a in streams.answers.values()), {r: len(a) for r, a in streams.answers.items()}
    assert monitor.samples > 20 and monitor.decreases == []
    assert went_back(streams.answers, assignment_history(stack, fleet)) == []
    # the robots saw the deployments change under them
    assert len({v for a in streams.answers.values() for v in a}) >= 2
    for p in fleet.servers:
        p.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_lost_publishes_heal_a_crash_after_commit_and_redis_losing_everything(stack, tmp_path):
    fleet = setup_fleet(stack, tmp_path, n_versions=3, n_robots=2, n_servers=1)
    v1, v2, v3 = fleet.versions
    with RobotStreams(fleet) as streams:
        # committed but never published (the API died between commit and publish)
        db = ControlDB(stack.settings.control_db_url)
        with db.session() as s:
            deploy(s, v2, "fleet", "*", stage="deploy", created_by="test")
        db.close()
        assert wait_converged(stack, fleet, 2.5) is not None, divergences(stack, fleet)
        assert divergences(stack, fleet) == [] and db_state(stack)["fleet_version"] == v2
        # junk on the channel is ignored, and the watcher goes on following it
        r = redis.Redis.from_url(stack.settings.redis_url)
        for junk in (b"not json", b"[1, 2]", json.dumps({"seq": 10**6, "robots": {}}).encode()):
            r.publish(stack.settings.channel, junk)
        r.close()
        with stack.client("operator") as c:
            assert c.post("/v1/deployments", json={"version": v1, "target_kind": "group", "target": "cell-b"}).status_code == 201
        assert wait_converged(stack, fleet, 2.0) is not None, divergences(stack, fleet)

        # Redis stops during deploys and comes back empty
        port = stack.redis.port
        stack.redis.stop()
        with stack.client("operator") as c:
            r = c.post("/v1/deployments", json={"version": v3})
            assert r.status_code == 201, r.text  # the change stands; publishing is retried
            r = c.post("/v1/deployments", json={"version": v1, "target_kind": "group", "target": "cell-a"})
            assert r.status_code == 201, r.text
            state = c.get("/v1/deployments/serving").json()
            assert state["published_seq"] is None and state["fleet_version"] == v3
        time.sleep(1.5)  # the reconciler and the watcher fail meanwhile, and keep trying
        restarted = start_redis(tmp_path / "redis-again", port=port)
        try:
            healed = wait_converged(stack, fleet, 3.0)
            assert healed is not None, divergences(stack, fleet)
            assert divergences(stack, fleet) == []
            assert db_state(stack)["published_seq"] == db_state(stack)["seq"]
            time.sleep(0.3)
        except BaseException:
            restarted.stop()
            raise
    try:
        assert streams.failures == [], streams.failures[:5]  # serving went on from the table it had
        assert went_back(streams.answers, assignment_history(stack, fleet)) == []
        robot_b = next(r for r, g in fleet.robots.items() if g == "cell-b")
        assert streams.answers[robot_b][-1] == v3
    finally:
        fleet.servers[0].stop()
        restarted.stop()
