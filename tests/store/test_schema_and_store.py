import time

import numpy as np
import pytest

from data.schema import ActionSource, Outcome, SchemaError, Tick
from data.store import DegenerateEpisodeError, EpisodeNotFound, EpisodeStore, StoreError
from data.synthetic import SyntheticFrames
from data.windows import action_chunk, history
from tests.store.generators import DEGENERATE_KINDS, write_degenerate
from tests.store.helpers import PERIOD, T0, assert_images_close, record, small_features


def _writer(store, **kw):
    feats = small_features()
    return store.new_episode(robot_id="r1", task_id="push", features=feats, fps=30, flush_ticks=4, fsync=False, **kw), \
        SyntheticFrames(feats, n_frames=4)


def test_round_trip_values(store_root):
    store = EpisodeStore(store_root)
    ep, frames = record(store, ticks=23, corrections=range(5, 9))
    assert len(ep) == 23
    assert ep.info.outcome == Outcome.SUCCESS and ep.info.outcome_labeller == "tester"
    for t in (0, 7, 22):
        want = frames.tick(t, T0 + t * PERIOD)
        np.testing.assert_array_equal(ep.state[t], want.state)
        np.testing.assert_array_equal(ep.action[t], want.action)
        np.testing.assert_array_equal(ep.proposed_action[t, 0], want.proposed[0])
        assert ep.timestamps_ns[t] == T0 + t * PERIOD
        for cam in ep.cameras:
            assert_images_close(ep.image(cam, t), want.images[cam])
    assert list(np.flatnonzero(ep.action_source == ActionSource.CORRECTION)) == [5, 6, 7, 8]
    assert ep.policy_version(0) == "v1" and ep.policy_version(6) is None
    assert ep.info.extra["source_counts"] == {"policy": 19, "correction": 4, "demonstration": 0, "hold": 0}
    assert ep.images("left_wrist", 20, 99).shape == (3, 48, 64, 3)


@pytest.mark.parametrize("field,change", [
    ("observation.state", {"state": np.zeros(5)}),
    ("observation.state", {"state": np.array([0, np.nan, 0, 0])}),
    ("action", {"action": np.array([0, np.inf, 0])}),
    ("action", {"action": np.array(["a", "b", "c"])}),
    ("images", {"images": "unknown"}),
    ("images", {"images": "missing"}),
    ("images.top", {"images": "float"}),
    ("images.top", {"images": "shape"}),
    ("proposed_action", {"proposed": np.zeros((2, 3))}),
    ("action_source", {"source": 9}),
    ("timestamp_ns", {"timestamp_ns": T0}),  # not increasing
    ("timestamp_ns", {"timestamp_ns": 1.5}),
    ("policy_version", {"policy_version": ""}),
])
def test_bad_tick_is_refused_and_harms_nothing(store_root, field, change):
    store = EpisodeStore(store_root)
    w, frames = _writer(store)
    for t in range(5):
        w.append(frames.tick(t, T0 + t * PERIOD))
    good = frames.tick(5, T0 + 5 * PERIOD)
    bad = Tick(good.timestamp_ns, good.state, good.action, good.source, dict(good.images), good.proposed, good.policy_version)
    for k, v in change.items():
        if k == "images":
            img = bad.images["top"]
            bad.images = {"unknown": lambda: {**bad.images, "extra_cam": img},
                          "missing": lambda: {"top": img},
                          "float": lambda: {**bad.images, "top": img.astype(np.float32)},
                          "shape": lambda: {**bad.images, "top": img[:10]}}[v]()
        else:
            setattr(bad, k, v)
    with pytest.raises(SchemaError) as exc:
        w.append(bad)
    assert exc.value.field.startswith(field) or exc.value.field.endswith(field), exc.value.field
    assert str(exc.value).startswith(exc.value.field)
    w.append(good)
    info = w.commit()
    ep = store.open(info.episode_id)
    assert len(ep) == 6
    np.testing.assert_array_equal(ep.state[5], good.state)


def test_in_flight_episode_is_invisible_until_commit(store_root):
    store = EpisodeStore(store_root)
    w, frames = _writer(store)
    for t in range(9):
        w.append(frames.tick(t, T0 + t * PERIOD))
    assert store.episode_ids() == []
    assert store.in_flight_ids() == [w.episode_id]
    with pytest.raises(EpisodeNotFound, match="not committed"):
        store.open(w.episode_id)
    w.commit()
    assert store.episode_ids() == [w.episode_id]
    with pytest.raises(StoreError, match="closed"):
        w.append(frames.tick(10, T0 + 10 * PERIOD))


def test_writers_hold_episodes_to_what_an_import_is_held_to(store_root):
    """The values verify_episode refuses in an imported episode are refused when a writer here starts one, before
    any folder exists: a rate past 10 kHz, a start time past 64 bits, a NUL in the instruction or in extra text."""
    store = EpisodeStore(store_root)
    for kw, field in (({"fps": 1e5}, "fps"), ({"start_time_ns": 2**64}, "start_time_ns"),
                      ({"instruction": "a\x00b"}, "instruction"), ({"extra": {"events": [{"why": "x\x00"}]}}, "extra")):
        with pytest.raises(SchemaError, match=field):
            store.new_episode(robot_id="r1", task_id="t", features=small_features(0), **{"fps": 30, **kw})
    assert store.episode_ids() == [] and store.in_flight_ids() == []
    w = store.new_episode(robot_id="r1", task_id="t", features=small_features(0), fps=30, start_time_ns=T0)
    frames = SyntheticFrames(small_features(0), n_frames=4)
    with pytest.raises(SchemaError, match="policy_version"):  # a version name a server sent: printable, or refused
        w.append(frames.tick(0, T0, ActionSource.POLICY, "v1\x00<b>"))
    w.append(frames.tick(0, T0, ActionSource.POLICY, "v1"))  # the refused tick changed nothing
    assert w.num_ticks == 1
    w.discard()


def test_labels_keep_history(store_root):
    store = EpisodeStore(store_root)
    ep, _ = record(store, outcome=Outcome.UNKNOWN)
    assert ep.info.outcome == Outcome.UNKNOWN
    t = ep.manifest["committed_at_ns"]
    store.label(ep.episode_id, "failure", "alice", at_ns=t + 1)
    info = store.label(ep.episode_id, Outcome.SUCCESS, "bob", at_ns=t + 2)
    assert (info.outcome, info.outcome_labeller, info.outcome_labelled_at_ns) == (Outcome.SUCCESS, "bob", t + 2)
    with pytest.raises(ValueError, match="no earlier than"):  # fsck would not vouch for it: it names no forger
        store.label(ep.episode_id, "failure", "mallory", at_ns=T0)
    again = store.open(ep.episode_id)
    assert [lab["labeller"] for lab in again.labels] == ["alice", "bob"]
    assert again.checksum == ep.checksum  # labels never touch the checksummed data
    with pytest.raises(ValueError):
        store.label(ep.episode_id, "great", "bob")


def test_windows_pad_with_mask():
    a = np.arange(10, dtype=np.float32)[:, None]
    chunk, pad = action_chunk(a, 7, 5)
    assert chunk[:, 0].tolist() == [7, 8, 9, 9, 9] and pad.tolist() == [False, False, False, True, True]
    h, hpad = history(a, 1, 3)
    assert h[:, 0].tolist() == [0, 0, 1] and hpad.tolist() == [True, False, False]


def test_ids_and_store_format_are_checked(tmp_path):
    store = EpisodeStore(tmp_path / "s")
    with pytest.raises(SchemaError, match="robot_id"):
        store.new_episode(robot_id="bad id/..", task_id="t", features=small_features(), fps=30)
    with pytest.raises(SchemaError, match="episode_id"):
        store.open("../etc")
    (tmp_path / "notastore").mkdir()
    (tmp_path / "notastore" / "store.json").write_text("{broken")
    with pytest.raises(StoreError, match="unreadable"):
        EpisodeStore(tmp_path / "notastore")
    with pytest.raises(StoreError, match="not an episode store"):
        EpisodeStore(tmp_path / "absent", create=False)


def test_episodes_are_published_only_once_locked(store_root):
    from data.files import FileLock
    from data.fsck import fsck

    store = EpisodeStore(store_root)
    dead = store.episodes_dir / ".20260101T000000-r1-aaaaaa.creating"  # its creator died before the rename
    dead.mkdir()
    (dead / ".lock").touch()
    live = store.episodes_dir / ".20260101T000000-r1-bbbbbb.creating"  # a writer creating it right now
    live.mkdir()
    holder = FileLock(live / ".lock")
    assert holder.try_acquire()
    assert store.in_flight_ids() == [] and store.episode_ids() == []
    report = fsck(store, repair=True)
    assert not dead.exists() and live.exists() and report.clean
    holder.release()
    w, frames = _writer(store)
    assert store.in_flight_ids() == [w.episode_id] and FileLock.is_locked(store.episode_dir(w.episode_id) / ".lock")
    w.abandon()


@pytest.mark.parametrize("ticks", [0, 1])
def test_commit_refuses_and_discards_an_episode_too_short_to_use(store_root, ticks):
    store = EpisodeStore(store_root)
    w, frames = _writer(store)
    for t in range(ticks):
        w.append(frames.tick(t, T0 + t * PERIOD))
    with pytest.raises(DegenerateEpisodeError, match=f"{w.episode_id} has {ticks} tick.*not committed"):
        w.commit(Outcome.FAILURE, "detector")
    assert store.episode_ids() == [] and store.in_flight_ids() == []
    assert not any(store.episodes_dir.iterdir())  # nothing left for fsck to recover
    with pytest.raises(StoreError, match="closed"):
        w.commit()
    ep, _ = record(store, ticks=2)  # the store takes the next episode as usual
    assert store.episode_ids() == [ep.episode_id] and ep.defect() is None


def test_degenerate_episodes_in_an_older_store_are_named_and_left_out_of_training_selections(store_root):
    from data.catalog import Catalog

    store = EpisodeStore(store_root)
    good, _ = record(store, ticks=12, start=T0 + 10**15)
    bad = {kind: write_degenerate(store, kind, index=i, task="push") for i, kind in enumerate(DEGENERATE_KINDS)}
    expected = {"empty": "0 ticks", "one_tick": "1 tick ", "nan_state": "observation.state has NaN",
                "inf_action": "action has NaN or infinite values (first at tick 11)",
                "short_arrays": "has 8 rows for 12 ticks"}
    for kind, eid in bad.items():
        assert expected[kind] in store.open(eid).defect(), (kind, store.open(eid).defect())
    assert good.defect() is None
    cat = Catalog.for_store(store)
    assert cat.register_many(store) == 6  # the catalog indexes them all: it is the store's index
    sel = cat.select_for_training(store, task="push")
    assert [r.id for r in sel.records] == [good.episode_id]
    assert set(sel.excluded) == set(bad.values())
    assert all(expected[k] in sel.excluded[eid] for k, eid in bad.items())
    cat.close()


def test_frames_read_straight_from_their_shard_equal_zarr_and_a_damaged_index_is_refused(store_root):
    """Training reads take each JPEG frame from its shard file directly (data/codecs.read_sharded_jpeg);
    every frame equals zarr's own read, an unwritten frame falls back to zarr, and a shard whose index
    checksum no longer matches is an error, never a wrong frame."""
    from data.codecs import jpeg_shard_layout, read_sharded_jpeg
    from data.store import IMAGES

    store = EpisodeStore(store_root)
    ep, _ = record(store, ticks=23)
    for cam in ep.cameras:
        per = jpeg_shard_layout(ep._image_array(cam))
        assert per is not None and per >= 1
        for t in range(len(ep)):
            np.testing.assert_array_equal(ep.image(cam, t), ep._image_array(cam)[t])
    cam = ep.cameras[0]
    per = jpeg_shard_layout(ep._image_array(cam))
    shard = ep.path / IMAGES / cam / "c" / "0" / "0" / "0" / "0"
    channels = ep.info.features.cameras[cam].channels
    assert read_sharded_jpeg(str(shard.with_name("9")), 0, per, channels) is None  # no such shard
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # a bit of the index flipped
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        ep.image(cam, 0)


def test_frames_written_elsewhere_commit_in_the_same_format_and_recover_only_whole_ticks(store_root):
    """The bridge's camera process writes an episode's frames (FrameWriter) beside the EpisodeWriter
    that writes the rest: the committed episode reads and verifies as any other; the journal never
    claims a tick whose frames are not on disk, so a crash recovers whole ticks only."""
    from data.fsck import recover_episode, verify_episode
    from data.store import FrameWriter

    store = EpisodeStore(store_root)
    feats = small_features()
    frames = SyntheticFrames(feats, n_frames=4)
    cams = list(feats.cameras)
    for crash in (False, True):
        durable = []
        w = store.new_episode(robot_id="r1", task_id="push", features=feats, fps=30, flush_ticks=4, fsync=False,
                              frames_elsewhere=lambda: durable[0].durable)
        fw = FrameWriter(w.path, cams, flush_ticks=4, fsync=False)
        durable.append(fw)
        with pytest.raises(SchemaError):  # the frames are not this writer's any more
            w.append(frames.tick(0, T0))
        ticks = [frames.tick(t, T0 + t * PERIOD) for t in range(11)]
        # no crash: a camera at half the loop's rate, each frame recorded at two ticks (same stamp)
        shown = ticks if crash else [ticks[t - t % 2] for t in range(11)]
        for t, tick in enumerate(shown[:6] if crash else shown):  # crash: the camera side is behind, then dies
            fw.add(t, [tick.images[c] for c in cams], None if crash else [t - t % 2] * len(cams))
        assert fw.encodes == 6 * len(cams)  # crash: 6 ticks added; else 11 ticks showing 6 distinct frames
        while crash and fw.durable < 4:
            time.sleep(0.01)
        for tick in ticks:
            w.append(Tick(tick.timestamp_ns, tick.state, tick.action, tick.source, proposed=tick.proposed))
        if crash:
            with pytest.raises(StoreError, match="frames of 6 ticks, 11 recorded"):  # never a partial commit
                fw.finish(11)
            while w.num_flushed < 8:
                time.sleep(0.01)
            w.abandon()
            assert recover_episode(w.path) == 4  # the frames' one durable chunk, not the 8 flushed ticks
            ep = store.open(w.episode_id)
        else:
            ep = store.open(w.commit(Outcome.SUCCESS, "tester", frames_written=fw.finish(11)).episode_id)
            assert len(ep) == 11
        assert verify_episode(ep.path) is None and ep.defect() is None
        for t in (0, 3, len(ep) - 1):
            for cam in cams:
                assert_images_close(ep.image(cam, t), shown[t].images[cam])
