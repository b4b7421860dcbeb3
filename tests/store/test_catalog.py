import shutil
import subprocess
import sys
import threading

import pytest
from sqlalchemy import text

from data.catalog import Catalog
from data.fsck import fsck
from data.schema import Outcome
from data.store import EpisodeStore
from tests.store.helpers import T0, record

DAY = 86_400 * 10**9


@pytest.fixture
def filled(store_root):
    store = EpisodeStore(store_root)
    cat = Catalog.for_store(store)
    eps = [
        record(store, robot="r1", task="push", outcome=Outcome.SUCCESS, version="v1", start=T0)[0],
        record(store, robot="r1", task="pick", outcome=Outcome.FAILURE, version="v2", corrections=range(3, 8), start=T0 + DAY)[0],
        record(store, robot="r2", task="push", outcome=Outcome.UNKNOWN, version="v2", start=T0 + 2 * DAY)[0],
    ]
    cat.register_many(eps)
    return store, cat, eps


def test_filters(filled):
    store, cat, eps = filled
    ids = [e.episode_id for e in eps]
    assert [r.id for r in cat.episodes()] == ids
    assert [r.id for r in cat.episodes(robot="r1")] == ids[:2]
    assert [r.id for r in cat.episodes(task=["push"])] == [ids[0], ids[2]]
    assert [r.id for r in cat.episodes(outcome="failure")] == [ids[1]]
    assert [r.id for r in cat.episodes(policy_version="v2")] == ids[1:]
    assert [r.id for r in cat.episodes(since_ns=T0 + DAY, until_ns=T0 + 2 * DAY)] == [ids[1]]
    assert [r.id for r in cat.episodes(with_corrections=True)] == [ids[1]]
    rec = cat.get(ids[1])
    assert rec.num_correction_ticks == 5 and rec.num_ticks == 25 and rec.checksum == eps[1].checksum
    assert rec.location.startswith("file://") and rec.policy_versions == ["v2"]


def test_relabel_keeps_who_and_when(filled):
    store, cat, eps = filled
    eid = eps[2].episode_id
    cat.label(store, eid, "failure", "alice")
    rec = cat.label(store, eid, "success", "bob")
    assert rec.outcome == "success" and rec.outcome_labeller == "bob"
    hist = cat.label_history(eid)
    assert [(h["outcome"], h["labeller"]) for h in hist] == [("failure", "alice"), ("success", "bob")]
    assert hist[0]["labelled_at_ns"] < hist[1]["labelled_at_ns"]
    # the first episode's commit-time label is its history's first entry
    assert cat.label_history(eps[0].episode_id)[0]["labeller"] == "tester"


def test_two_labels_at_once_leave_the_newest_in_the_catalog(filled):
    """Two label requests interleaved: A writes its label and reads the episode, B labels and indexes in full, then
    A indexes its older snapshot. The catalog keeps B's outcome and the whole history, as the store has them."""
    store, cat, eps = filled
    eid = eps[2].episode_id
    store.label(eid, "failure", "alice")
    snapshot_a = store.open(eid)
    cat.label(store, eid, "success", "bob")
    cat.register(snapshot_a)
    rec = cat.get(eid)
    assert (rec.outcome, rec.outcome_labeller) == ("success", "bob") == (str(store.open(eid).info.outcome), "bob")
    assert [(h["outcome"], h["labeller"]) for h in cat.label_history(eid)] == [("failure", "alice"), ("success", "bob")]
    assert cat.reconcile(store).consistent
    # the same label time, a snapshot with fewer labels indexed last: nothing of the history is lost
    store.label(eid, "failure", "carol", at_ns=rec.outcome_labelled_at_ns)
    cat.register(store.open(eid))
    cat.register(snapshot_a)
    assert [h["labeller"] for h in cat.label_history(eid)] == ["alice", "bob", "carol"]
    # reconcile takes the store's word even over a row that claims a newer label
    with cat.engine.begin() as c:
        c.execute(text("UPDATE episodes SET outcome = 'failure', outcome_labelled_at_ns = :t WHERE id = :e"),
                  {"t": 2**62, "e": eid})
    assert not cat.reconcile(store).consistent
    cat.reconcile(store, repair=True)
    assert cat.reconcile(store).consistent and cat.get(eid).outcome == str(store.open(eid).info.outcome)


def test_reconcile_repairs_every_kind_of_mismatch(filled):
    store, cat, eps = filled
    assert cat.reconcile(store).consistent
    with cat.engine.begin() as c:  # a row lost
        c.execute(text("DELETE FROM episode_policy_versions WHERE episode_id = :e"), {"e": eps[0].episode_id})
        c.execute(text("DELETE FROM outcome_labels WHERE episode_id = :e"), {"e": eps[0].episode_id})
        c.execute(text("DELETE FROM episodes WHERE id = :e"), {"e": eps[0].episode_id})
    shutil.rmtree(store.episode_dir(eps[1].episode_id))  # data gone
    store.label(eps[2].episode_id, "success", "carol")  # labelled behind the catalog's back
    rep = cat.reconcile(store)
    assert (rep.added, rep.removed, rep.updated) == ([eps[0].episode_id], [eps[1].episode_id], [eps[2].episode_id])
    cat.reconcile(store, repair=True)
    assert cat.reconcile(store).consistent
    assert cat.get(eps[2].episode_id).outcome == "success"


def test_corrupt_episode_is_named_and_quarantined(filled):
    store, cat, eps = filled
    victim = store.episode_dir(eps[0].episode_id)
    shard = next(p for p in (victim / "images").rglob("*") if p.is_file() and p.name != "zarr.json")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    rep = fsck(store)
    assert list(rep.corrupt) == [eps[0].episode_id] and "sha256" in rep.corrupt[eps[0].episode_id]
    rep = fsck(store, repair=True)
    assert rep.quarantined == [eps[0].episode_id]
    assert eps[0].episode_id not in store.episode_ids()
    assert (store.root / "quarantine").is_dir()
    cat.reconcile(store, repair=True)
    assert eps[0].episode_id not in [r.id for r in cat.episodes()]


def test_migrations_run_once_even_when_two_processes_open_a_new_catalog(tmp_path):
    url = f"sqlite:///{tmp_path / 'cat.sqlite'}"
    code = f"from data.catalog import Catalog; c = Catalog({url!r}); print(c.current_revision())"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and outs == ["0003"] * 3


def test_registering_one_episode_from_several_threads_at_once_is_idempotent(store_root):
    """The API registers an episode when a robot reports it and when someone asks for it before
    that: the same new row from two requests at once must not fail either of them."""
    store = EpisodeStore(store_root)
    eps = [record(store, robot=f"r{i % 3}", task=f"task{i % 2}", start=T0 + i)[0] for i in range(12)]
    cat = Catalog.for_store(store)
    errors: list[BaseException] = []

    def register(ep, barrier):
        try:
            barrier.wait()
            cat.register(ep)
        except BaseException as e:  # noqa: BLE001 (collected and reported below)
            errors.append(e)

    for ep in eps:
        barrier = threading.Barrier(4)
        threads = [threading.Thread(target=register, args=(ep, barrier)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, f"{len(errors)} registrations failed, first: {errors[0]!r}"
    assert [r.id for r in cat.episodes()] == [e.episode_id for e in eps]
    assert all(len(cat.label_history(e.episode_id)) == 1 for e in eps)


def test_takeovers_are_counted_and_evaluation_episodes_never_reach_training(store_root):
    store = EpisodeStore(store_root)
    cat = Catalog.for_store(store)
    two = record(store, corrections=[*range(3, 6), *range(10, 12)], start=T0)[0]  # two stretches: two takeovers
    one = record(store, corrections=range(0, 4), start=T0 + 1)[0]
    none = record(store, start=T0 + 2)[0]
    cat.register_many([two, one, none])
    assert [cat.get(e.episode_id).num_takeovers for e in (two, one, none)] == [2, 1, 0]
    flagged = cat.set_evaluation([none.episode_id])
    assert [r.evaluation for r in flagged] == [True]
    assert [r.id for r in cat.episodes(evaluation=True)] == [none.episode_id]
    sel = cat.select_for_training(store)
    assert {r.id for r in sel.records} == {two.episode_id, one.episode_id}
    assert sel.excluded == {none.episode_id: "evaluation episode (held out from training)"}
    cat.register(store.open(none.episode_id))  # re-indexing from the store keeps the flag
    assert cat.get(none.episode_id).evaluation
    with pytest.raises(KeyError):
        cat.set_evaluation([one.episode_id, "missing"])
    assert not cat.get(one.episode_id).evaluation  # all or nothing
