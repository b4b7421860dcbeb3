import numpy as np
import pytest

from data.lerobot_io import export_lerobot, import_lerobot
from data.schema import ActionSource, Outcome
from data.store import EpisodeStore
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
    ids = import_lerobot(tmp_path / "lr", other, robot_id="lab-arm", task_id="push")
    assert len(ids) == 2
    for src, eid in zip(eps, ids):
        ep = other.open(eid)
        assert len(ep) == len(src) and ep.info.outcome == Outcome.SUCCESS
        assert (ep.action_source == ActionSource.DEMONSTRATION).all()
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
