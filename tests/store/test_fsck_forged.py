"""fsck on the states a forged upload could leave (before uploads were checked): a directory whose
manifest or attributes name another episode, files the store did not write, label files it did
not write, malformed manifests. One `--repair` pass reaches a clean store and catalog; a second
finds nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from data.catalog import Catalog
from data.fsck import fsck
from data.store import EpisodeStore, new_episode_id
from tests.services.forged_uploads import plant_forged_states, recommit, set_attrs
from data.schema import ActionSource, Outcome
from tests.store.helpers import PERIOD, T0, SyntheticFrames, small_features
from tests.store.helpers import record


def test_fsck_repair_converges_in_one_pass(tmp_path):
    store = EpisodeStore(tmp_path / "store")
    cat = Catalog.for_store(store)
    try:
        ids = plant_forged_states(store, cat)
        first = fsck(store)
        assert set(first.corrupt) == {ids["c"], ids["bad"], ids["nojson"]}, first.corrupt
        assert set(first.stray[ids["b"]]) == {"notes.txt", "state/c/9/0", f"labels/{1:020d}-abcdef.json",
                                              "labels/forged.json"}
        assert not first.clean
        repaired = fsck(store, repair=True)
        cat.reconcile(store, repair=True)
        second = fsck(store, repair=True)
        assert second.clean and not second.actions, second.to_dict()
        assert cat.reconcile(store).consistent
        assert set(store.episode_ids()) == {ids["a"], ids["b"]}
        hist = cat.label_history(ids["b"])
        assert [h["labeller"] for h in hist] == ["tester", "teleop"], hist
        assert cat.get(ids["a"]).robot_id == "arm-a" and cat.get(ids["b"]).outcome == "failure"
        assert len(repaired.quarantined) == 3
    finally:
        cat.close()


def test_catalog_refuses_a_directory_speaking_for_another_episode(tmp_path):
    store = EpisodeStore(tmp_path / "store")
    cat = Catalog.for_store(store)
    try:
        a, _ = record(store, robot="arm-a", cameras=1)
        cat.register(store.open(a.episode_id))
        c_id = new_episode_id("arm-c")
        shutil.copytree(a.path, store.episodes_dir / c_id)
        set_attrs(store.episodes_dir / c_id, robot_id="hijacked")
        recommit(store.episodes_dir / c_id)
        from data.store import EpisodeData, StoreError

        try:
            store.open(c_id)
        except StoreError as e:
            assert "fsck" in str(e)
        else:
            raise AssertionError("an episode whose attributes name another id was opened")
        ep = object.__new__(EpisodeData)  # defence in depth: even a handmade EpisodeData is refused
        ep.path, ep.info = store.episodes_dir / c_id, store.open(a.episode_id).info
        try:
            cat.register(ep)
        except StoreError as e:
            assert "not indexed" in str(e)
        else:
            raise AssertionError("the catalog indexed a directory under another episode's id")
        assert cat.get(a.episode_id).robot_id == "arm-a"
        # and the CLI: one repair pass, then a check that finds nothing (exit 0)
        cli = [sys.executable, "-m", "data.cli_root", "data", "fsck", "--store", str(store.root)]
        assert subprocess.run(cli + ["--repair"], capture_output=True, text=True, timeout=120).returncode == 0
        out = subprocess.run(cli, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "0 corrupt" in out.stdout, out.stdout + out.stderr
    finally:
        cat.close()


def test_an_episode_put_into_the_store_by_hand_is_held_to_the_writers_rules(tmp_path):
    """A directory placed in the shared store by hand, consistent with its own manifest and id but with
    attribute values no writer here makes (a NUL in a labeller, a rate of 1e9 Hz, a time past 2**63), is
    neither read nor indexed: opening it names the attribute, reconcile leaves it out, fsck reports it.
    A label file with a labeller that EpisodeStore.label would refuse is skipped and reported."""
    store = EpisodeStore(tmp_path / "store")
    cat = Catalog.for_store(store)
    try:
        a, _ = record(store, robot="arm-a", cameras=1)
        cat.register(store.open(a.episode_id))
        planted = _plant(store, a.path, (("outcome_labeller", "ops\x00admin"), ("fps", 1e9), ("end_time_ns", 2**64),
                                         ("policy_versions", ["v1\n<script>"])))
        for attr, err in planted.values():
            assert f"attribute {attr}" in err and "fsck" in err, err
        report = cat.reconcile(store, repair=True)
        assert report.added == [] and cat.reconcile(store).consistent
        assert [e.id for e in cat.episodes()] == [a.episode_id]
        assert set(planted) <= set(fsck(store).corrupt)
        # a label file named as the store names them, whose labeller carries a control character
        at = store.open(a.episode_id).manifest["committed_at_ns"] + 1
        bad = a.path / "labels" / f"{at:020d}-abcdef.json"
        bad.parent.mkdir(exist_ok=True)
        bad.write_text(json.dumps({"outcome": "failure", "labeller": "admin\x1b[2J", "labelled_at_ns": at}))
        assert store.open(a.episode_id).info.outcome_labeller != "admin\x1b[2J"
        assert "labels/" + bad.name in fsck(store).stray[a.episode_id]
        try:
            store.label(a.episode_id, "failure", "op\x00")
        except ValueError as e:
            assert "labeller" in str(e)
        else:
            raise AssertionError("a labeller with a NUL was written")
    finally:
        cat.close()


def test_what_the_store_writes_it_can_read_and_what_it_reads_fsck_keeps(tmp_path):
    """The store's own writer never commits an episode it then refuses to open (a NUL in a noted
    event's text is made visible, not kept); attributes of the wrong shape or size (events not a list,
    source counts not counts, a tick count past the catalog's column, an infinite time) make an episode
    unreadable with a StoreError, never another exception; the labels a reader takes are exactly the
    label files fsck keeps; a name rule that refuses control characters still takes any other text."""
    from data.schema import count_sources
    from data.store import read_labels
    from data.video import RetentionPolicy, transcode_pass

    store = EpisodeStore(tmp_path / "store")
    feats = small_features(1)
    frames = SyntheticFrames(feats, n_frames=4)
    w = store.new_episode(robot_id="arm-a", task_id="push", features=feats, fps=30, instruction="push it")
    for t in range(6):
        w.append(frames.tick(t, T0 + t * PERIOD, ActionSource.POLICY, "v1"))
    w.note_event("mistake", T0 + 2 * PERIOD, why="stall\x00<b>", **{"k\x00": "v"})
    info = w.commit(Outcome.FAILURE, "op\u00a0ana \U0001F9D1\u200D\U0001F527")  # NBSP, an emoji with a joiner
    ep = store.open(info.episode_id)
    (event,) = ep.info.extra["events"]
    assert event["why"] == "stall\ufffd<b>" and event["k\ufffd"] == "v" and event["kind"] == "mistake"
    assert ep.info.extra["source_counts"] == count_sources(ep.action_source) == {
        "policy": 6, "correction": 0, "demonstration": 0, "hold": 0}
    for bad in ("op\tana", "x" * 129, ""):
        try:
            store.label(info.episode_id, "success", bad)
        except ValueError as e:
            assert "labeller" in str(e)
        else:
            raise AssertionError(f"labeller {bad!r} was written")
    try:
        store.label(info.episode_id, "success", "op", at_ns=2**63)  # a time no reader would take back
    except ValueError as e:
        assert "labelled_at_ns" in str(e)
    else:
        raise AssertionError("a label past 2**63 ns was written")

    feats_attr = json.loads((ep.path / "zarr.json").read_text())["attributes"]["features"]
    planted = _plant(store, ep.path, (("extra", {"events": {"kind": "mistake"}}), ("extra", {"source_counts": {"policy": "<b>"}}),
                                      ("extra", {"source_counts": [1, 2]}), ("num_ticks", 2**31),
                                      ("start_time_ns", float("inf")), ("features", {**feats_attr, "cameras": [1]})))
    for attr, err in planted.values():
        assert attr in err or "unreadable" in err, err
    # a robot shipping an episode whose central copy is there but unreadable: a refusal, not an error to retry
    from data.transfer import EpisodeExists, IngestSpool

    spool = IngestSpool(tmp_path / "ingest", store, None)
    for eid in planted:
        try:
            spool.shipped(eid, "0" * 64)
        except EpisodeExists as e:
            assert "cannot be read" in str(e)
        else:
            raise AssertionError("an unreadable central copy counted as shipped")
    cat = Catalog.for_store(store)
    try:
        report = cat.reconcile(store, repair=True)
        assert report.added == [info.episode_id], report
    finally:
        cat.close()
    # the video tier's pass skips what the store will not open and goes on with the rest
    done = transcode_pass(store, RetentionPolicy(transcode_after_s=0, keep_jpeg_days=1e9))
    assert [r.episode_id for r in done] == [info.episode_id]

    # label files: the reader takes exactly those fsck keeps
    labels = ep.path / "labels"
    labels.mkdir(exist_ok=True)
    committed = ep.manifest["committed_at_ns"]
    forged = {f"{committed + 10:020d}-aaaaaa.json": {"outcome": "success", "labeller": "x", "labelled_at_ns": str(committed + 10)},
              f"{committed + 11:020d}-bbbbbb.json": {"outcome": "success", "labeller": "x", "labelled_at_ns": committed + 12},
              f"{committed - 1:020d}-cccccc.json": {"outcome": "success", "labeller": "x", "labelled_at_ns": committed - 1},
              "forged.json": {"outcome": "success", "labeller": "x", "labelled_at_ns": committed + 13}}
    for name, body in forged.items():
        (labels / name).write_text(json.dumps(body))
    (labels / f"{committed + 14:020d}-dddddd.json").write_text(
        '{"outcome": "success", "labeller": "x", "labelled_at_ns": Infinity}')
    assert read_labels(ep.path, committed) == [] and store.open(info.episode_id).info.outcome == "failure"
    assert store.open(info.episode_id).info.outcome_labeller == "op\u00a0ana \U0001F9D1\u200D\U0001F527"
    store.label(info.episode_id, "success", "reviewer")  # a real label, beside the forged ones
    assert [(lab["outcome"], lab["labeller"]) for lab in read_labels(ep.path, committed)] == [("success", "reviewer")]
    assert store.open(info.episode_id).info.outcome == "success"
    strays = set(fsck(store).stray[info.episode_id])
    assert {f"labels/{n}" for n in forged} | {f"labels/{committed + 14:020d}-dddddd.json"} <= strays, strays


def _plant(store: EpisodeStore, src, cases) -> dict[str, tuple[str, str]]:
    """Copies of the episode at `src` under new ids, each with one attribute forged and a manifest that
    matches (put into the store by hand); {id: (the attribute, the StoreError that opening it raised)}."""
    from data.store import StoreError

    out = {}
    for attr, value in cases:
        eid = new_episode_id("arm-h")
        shutil.copytree(src, store.episodes_dir / eid)
        set_attrs(store.episodes_dir / eid, episode_id=eid, **{attr: value})
        recommit(store.episodes_dir / eid)
        try:
            store.open(eid)
        except StoreError as e:
            out[eid] = (attr, str(e))
        else:
            raise AssertionError(f"an episode with a forged {attr} was opened")
    return out
