import numpy as np
import pytest

from data.lerobot_io import ExportVerificationError, export_lerobot, import_lerobot, verify_export
from data.schema import ActionSource, Outcome
from data.store import EpisodeStore
from tests.store.generators import ACTIONS, JOINTS, BusyLoops, labelled_episode, round_trip_differences
from tests.store.helpers import T0, assert_images_close, record


@pytest.fixture
def two_episodes(store_root):
    store = EpisodeStore(store_root)
    eps = [record(store, ticks=20, corrections=range(4, 9), start=T0)[0],
           record(store, ticks=15, outcome=Outcome.FAILURE, start=T0 + 10**12)[0]]
    return store, eps


def test_export_loads_in_lerobot_dataset_with_the_same_values(two_episodes, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    store, eps = two_episodes
    adv = {e.episode_id: (np.arange(len(e)) % 3 == 0).astype(np.float32) for e in eps}
    export_lerobot(store, [e.episode_id for e in eps], tmp_path / "lr", use_videos=False,
                   extra_columns={"advantage_indicator": adv})
    ds = LeRobotDataset("local/test", root=tmp_path / "lr")
    assert ds.meta.total_episodes == 2 and len(ds) == 35
    i = 0
    for e in eps:
        for t in range(len(e)):
            item = ds[i]
            np.testing.assert_array_equal(item["observation.state"].numpy(), e.state[t])
            np.testing.assert_array_equal(item["action"].numpy(), e.action[t])
            assert int(item["action_source"]) == int(e.action_source[t])
            assert bool(item["is_correction"]) == (e.action_source[t] == ActionSource.CORRECTION)
            assert int(item["timestamp_ns"]) == int(e.timestamps_ns[t])
            assert float(item["advantage_indicator"]) == adv[e.episode_id][t]
            assert item["task"] == "push it"
            for cam in e.cameras:
                img = (item[f"observation.images.{cam}"].numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0)
                np.testing.assert_array_equal(img, e.image(cam, t))  # PNG export is lossless
            i += 1


@pytest.mark.slow
def test_video_export_and_import_round_trip(two_episodes, tmp_path):
    store, eps = two_episodes
    export_lerobot(store, [e.episode_id for e in eps], tmp_path / "lr", use_videos=True)
    other = EpisodeStore(tmp_path / "other")
    ids = import_lerobot(tmp_path / "lr", other, robot_id="lab-arm", task_id="push", keep_labels=True)
    assert len(ids) == 2
    for src, eid in zip(eps, ids):
        ep = other.open(eid)
        assert len(ep) == len(src) and ep.info.outcome == src.info.outcome
        assert (ep.info.robot_id, ep.info.task_id) == ("lab-arm", "push")  # the overrides win
        np.testing.assert_array_equal(ep.action_source, src.action_source)
        np.testing.assert_array_equal(ep.state, src.state)
        np.testing.assert_array_equal(ep.action, src.action)
        for t in (0, len(ep) - 1):
            assert_images_close(ep.image("top", t), src.image("top", t), tol=12.0)  # JPEG -> AV1 -> JPEG


def test_export_refuses_a_non_empty_target(two_episodes, tmp_path):
    store, eps = two_episodes
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(FileExistsError):
        export_lerobot(store, [eps[0].episode_id], tmp_path / "full")
    assert (tmp_path / "full" / "x").read_text() == "keep me"


@pytest.mark.slow
def test_round_trip_keeps_every_field(tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    store = EpisodeStore(tmp_path / "s")
    eps = [labelled_episode(store, outcome=Outcome.FAILURE, labeller="alice"),
           labelled_episode(store, ticks=18, outcome=Outcome.SUCCESS, labeller="detector", start=T0 + 10**12, seed=1)]
    store.label(eps[0].episode_id, Outcome.SUCCESS, "carol")  # a later label: the newest one travels
    eps = [store.open(e.episode_id) for e in eps]
    export_lerobot(store, [e.episode_id for e in eps], tmp_path / "lr", use_videos=True)

    ds = LeRobotDataset("local/test", root=tmp_path / "lr")
    assert ds.meta.robot_type == "so100"
    assert ds.meta.features["observation.state"]["names"] == JOINTS
    assert ds.meta.features["action"]["names"] == ACTIONS
    assert set(ds.meta.video_keys) == {"observation.images.top", "observation.images.wrist.left"}
    src = eps[0].action_source
    flags = np.asarray(ds.hf_dataset["is_intervention"]).reshape(-1)[: len(eps[0])]
    np.testing.assert_array_equal(flags, src == ActionSource.CORRECTION)

    other = EpisodeStore(tmp_path / "other")
    ids = import_lerobot(tmp_path / "lr", other, keep_labels=True)
    assert len(ids) == 2
    for a, eid in zip(eps, ids):
        b = other.open(eid)
        assert round_trip_differences(a, b) == []
        assert b.info.extra["operator"] == "bob"  # the rest of the episode's attributes travel too
        for cam in a.cameras:
            for t in (0, len(a) - 1):
                assert_images_close(b.image(cam, t), a.image(cam, t), tol=12.0)
    assert other.open(ids[0]).info.outcome_labeller == "carol"

    # an upload does not keep labels: the outcome is the importer's, the attributes its own
    untrusted = import_lerobot(tmp_path / "lr", other, robot_id="up", labeller="api-upload")
    ep = other.open(untrusted[0])
    assert (ep.info.outcome, ep.info.outcome_labeller, ep.info.robot_id) == (Outcome.SUCCESS, "api-upload", "up")
    assert "operator" not in ep.info.extra
    np.testing.assert_array_equal(ep.action_source, eps[0].action_source)


def test_foreign_dataset_imports_interventions_as_corrections(tmp_path):
    """A dataset recap did not write: demonstrations, `is_intervention` ticks as corrections."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {"observation.state": {"dtype": "float32", "shape": (2,), "names": ["a", "b"]},
                "action": {"dtype": "float32", "shape": (2,), "names": None},
                "is_intervention": {"dtype": "bool", "shape": (1,), "names": None}}
    ds = LeRobotDataset.create(repo_id="local/foreign", fps=10, features=features, root=tmp_path / "f",
                               robot_type="koch", use_videos=False)
    for t in range(6):
        ds.add_frame({"observation.state": np.full(2, t, np.float32), "action": np.ones(2, np.float32),
                      "is_intervention": np.array([t in (2, 3)]), "task": "wave"})
    ds.save_episode()
    ds.finalize()
    store = EpisodeStore(tmp_path / "s")
    with pytest.raises(ValueError, match="robot id"):
        import_lerobot(tmp_path / "f", store)
    [eid] = import_lerobot(tmp_path / "f", store, robot_id="lab")
    ep = store.open(eid)
    assert list(ep.action_source) == [2, 2, 1, 1, 2, 2]
    assert ep.info.outcome == Outcome.SUCCESS and ep.info.outcome_labeller == "lerobot-import"
    assert ep.info.extra["robot_type"] == "koch" and ep.info.extra["joint_names"] == {"observation.state": ["a", "b"]}


@pytest.mark.slow
def test_video_export_under_cpu_load_keeps_every_frame(tmp_path):
    store = EpisodeStore(tmp_path / "s")
    ids = [labelled_episode(store, ticks=90, start=T0 + i * 10**12, seed=i, cameras=("top",)).episode_id
           for i in range(3)]
    with BusyLoops(4):
        export_lerobot(store, ids, tmp_path / "lr", use_videos=True)
    frames = verify_export(tmp_path / "lr", expected_rows=270)
    assert frames == {"observation.images.top": 270}


@pytest.mark.slow
def test_verification_fails_loudly_on_a_missing_frame(tmp_path):
    import av

    store = EpisodeStore(tmp_path / "s")
    eid = labelled_episode(store, ticks=12, cameras=("top",)).episode_id
    export_lerobot(store, [eid], tmp_path / "lr", use_videos=True)
    [video] = (tmp_path / "lr" / "videos").rglob("*.mp4")
    with av.open(str(video)) as src:  # the same video less its last frame, as a dropping encoder leaves it
        images = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    with av.open(str(video), "w") as dst:
        stream = dst.add_stream("libsvtav1", rate=30)
        stream.width, stream.height, stream.pix_fmt = images[0].shape[1], images[0].shape[0], "yuv420p"
        for img in images[:-1]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                dst.mux(packet)
        for packet in stream.encode():
            dst.mux(packet)
    with pytest.raises(ExportVerificationError, match="11 video frames for 12 rows"):
        verify_export(tmp_path / "lr")


def test_an_import_with_a_labeller_the_store_refuses_writes_nothing(two_episodes, tmp_path):
    """A recap export whose sidecar names a labeller the store's name rule refuses (a control
    character), or an import `labeller` like it, is refused before any episode is written."""
    import json

    from data.lerobot_io import SIDECAR
    from data.schema import SchemaError

    store, eps = two_episodes
    export_lerobot(store, [e.episode_id for e in eps], tmp_path / "lr", use_videos=False)
    side = tmp_path / "lr" / SIDECAR
    doc = json.loads(side.read_text())
    doc["episodes"][-1]["outcome_labeller"] = "ops\x1b[2J"
    side.write_text(json.dumps(doc))
    other = EpisodeStore(tmp_path / "other")
    with pytest.raises(SchemaError, match="outcome_labeller"):
        import_lerobot(tmp_path / "lr", other, keep_labels=True)
    with pytest.raises(SchemaError, match="labeller"):
        import_lerobot(tmp_path / "lr", other, robot_id="lab-arm", labeller="a\x00b")
    assert other.episode_ids() == [] and not any(other.episodes_dir.glob(".*"))
