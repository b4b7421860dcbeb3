"""Real processes killed with SIGKILL, two writers at once, and a real full disk (tmpfs)."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.catalog import Catalog
from data.fsck import fsck, verify_episode
from data.schema import EpisodeStatus
from data.store import EpisodeStore, StoreFullError
from tests.store.helpers import record

RECAP = [sys.executable, "-m", "data.cli_root"]


def _recorder(store: Path, log: Path, robot: str = "r1", ticks: int = 40, extra=()) -> subprocess.Popen:
    cmd = RECAP + ["data", "record-synthetic", "--store", str(store), "--episodes", "100000", "--ticks", str(ticks),
                   "--size", "48x64", "--fps", "0", "--flush-ticks", "5", "--robot", robot,
                   "--log-commits", str(log), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _logged(log: Path) -> list[dict]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _wait_for_commits(log: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until the recorder has logged `n` commits in total (it is making progress)."""
    deadline = time.time() + timeout
    while len(_logged(log)) < n:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, f"recorder made no progress in {timeout} s"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_at_random_moments_never_loses_committed_episodes(tmp_path):
    store_dir, log = tmp_path / "store", tmp_path / "commits.jsonl"
    EpisodeStore(store_dir)
    rng = random.Random(7)
    kills = 8
    for i in range(kills):
        proc = _recorder(store_dir, log)
        _wait_for_commits(log, len(_logged(log)) + 1, proc)  # past start-up, recording
        time.sleep(rng.uniform(0.0, 0.6))  # then a random moment: mid-episode, mid-flush or mid-commit
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = EpisodeStore(store_dir, create=False)  # still opens
        committed = _logged(log)
        for c in committed:  # every episode whose commit() returned is intact, bit for bit
            assert verify_episode(store.episode_dir(c["episode_id"])) is None, c
            assert store.open(c["episode_id"]).checksum == c["checksum"]
        report = fsck(store, repair=True)
        assert not report.corrupt, report.corrupt
        assert not report.live
        for eid, kept in report.recovered.items():
            ep = store.open(eid)
            assert ep.info.status == EpisodeStatus.INCOMPLETE and len(ep) == kept and kept % 5 == 0
            ep.image(ep.cameras[0], kept - 1)  # last recovered tick decodes
        assert fsck(store).clean
    committed = _logged(log)
    assert len(committed) >= kills  # the recorder made progress between kills
    store = EpisodeStore(store_dir)
    cat = Catalog.for_store(store)
    cat.reconcile(store, repair=True)
    assert cat.reconcile(store).consistent
    assert {c["episode_id"] for c in committed} <= {r.id for r in cat.episodes()}


@pytest.mark.slow
def test_two_writer_processes_and_a_reader(tmp_path):
    store_dir = tmp_path / "store"
    EpisodeStore(store_dir)
    Catalog.for_store(EpisodeStore(store_dir)).close()
    procs = [_recorder(store_dir, tmp_path / f"log{r}.jsonl", robot=r, ticks=30) for r in ("robot-a", "robot-b")]
    store = EpisodeStore(store_dir)
    seen: dict[str, str] = {}  # episode -> robot
    reads = 0
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            per_robot = {r: sum(1 for x in seen.values() if x == r) for r in ("robot-a", "robot-b")}
            if min(per_robot.values()) >= 5 and reads > 20:
                break
            for eid in store.episode_ids():
                ep = store.open(eid)  # never a half-written episode
                assert len(ep) == 30 and ep.state.shape == (30, 14)
                assert ep.image(ep.cameras[0], 29).shape == (48, 64, 3)
                seen[eid] = ep.info.robot_id
                reads += 1
            time.sleep(0.05)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    assert set(seen.values()) == {"robot-a", "robot-b"} and reads > 20
    report = fsck(store, repair=True)
    assert not report.corrupt
    cat = Catalog.for_store(store)
    rec = cat.reconcile(store)
    assert not rec.removed and not rec.updated  # both processes registered concurrently without clashes
    cat.reconcile(store, repair=True)
    assert len(cat.episodes(robot="robot-a")) > 3 and len(cat.episodes(robot="robot-b")) > 3


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_fails_the_episode_cleanly(small_disk):
    store = EpisodeStore(small_disk / "store")
    committed = []
    with pytest.raises(StoreFullError, match="disk full") as exc:
        for i in range(1000):
            ep, _ = record(store, ticks=40, cameras=2, flush_ticks=5, start=10**18 + i * 10**10, fsync=True)
            committed.append((ep.episode_id, ep.checksum))
    assert "committed episodes are intact" in str(exc.value) or "in flight" in str(exc.value)
    assert len(committed) > 3
    for eid, checksum in committed:
        assert verify_episode(store.episode_dir(eid)) is None
        assert store.open(eid).checksum == checksum
    assert store.episode_ids() == sorted(e for e, _ in committed)
    # make room, then fsck turns the failed episode into an incomplete one (or sets it aside)
    for eid, _ in committed[:2]:
        subprocess.run(["rm", "-rf", str(store.episode_dir(eid))], check=True)
    report = fsck(store, repair=True)
    assert not report.corrupt and len(report.recovered) + len(report.quarantined) == 1
    assert fsck(store).clean
