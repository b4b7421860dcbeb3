import numpy as np
import torch
from torch.utils.data import DataLoader

from data.stats import NormalizationStats, compute_stats
from data.store import EpisodeStore
from data.torch_dataset import EpisodeDataset
from tests.store.helpers import T0, record


def test_dataset_windows_and_loader(store_root, tmp_path):
    store = EpisodeStore(store_root)
    eps = [record(store, ticks=12, start=T0)[0], record(store, ticks=9, start=T0 + 10**12)[0]]
    ds = EpisodeDataset(store, [e.episode_id for e in eps], horizon=5, state_history=2)
    assert len(ds) == 21
    item = ds[12 + 6]  # episode 1, tick 6
    assert item["episode_index"] == 1 and item["tick"] == 6
    np.testing.assert_array_equal(item["action"].numpy()[:3], eps[1].action[6:9])
    assert item["action_is_pad"].tolist() == [False, False, False, True, True]
    np.testing.assert_array_equal(item["action"].numpy()[3], eps[1].action[8])  # padded with the last action
    assert item["observation.state"].shape == (2, 4)
    img = item["observation.images.top"]
    assert img.shape == (3, 48, 64) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 1
    first = ds[0]
    assert first["observation.state_is_pad"].tolist() == [True, False]
    batches = list(DataLoader(ds, batch_size=8, shuffle=True, num_workers=2))
    assert sum(len(b["tick"]) for b in batches) == 21

    stats = compute_stats(eps)
    allstate = np.concatenate([e.state for e in eps])
    np.testing.assert_allclose(stats["observation.state"].mean, allstate.mean(0), rtol=1e-5, atol=1e-6)
    assert set(stats.features) == {"observation.state", "action", "observation.images.top", "observation.images.left_wrist"}
    stats.save(tmp_path / "stats.json")
    again = NormalizationStats.load(tmp_path / "stats.json")
    assert again["action"].std == stats["action"].std
    norm = EpisodeDataset(store, [eps[0].episode_id], horizon=2, stats=again, cameras=[])
    x = norm[3]["observation.state"].numpy()
    np.testing.assert_allclose(x, again["observation.state"].normalize(eps[0].state[3]), rtol=1e-5)
    assert "observation.images.top" not in norm[3]
