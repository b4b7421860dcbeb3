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


def test_samples_reuse_freed_frame_memory_instead_of_page_faulting_it_in_again(store_root):
    """A sample's frames are allocated afresh and freed after the batch; the reader keeps freed
    blocks for the next sample (data.torch_dataset.keep_freed_frames): reading 3-camera samples of
    480x640 frames page-faults far less than one frame's pages (11 MB of float frames a sample; were
    they handed back to the kernel when freed, each sample would fault them in again)."""
    import subprocess
    import sys
    from pathlib import Path

    from data.synthetic import SyntheticFrames, features

    store = EpisodeStore(store_root)
    frames = SyntheticFrames(features(3, 480, 640, 4, 4), n_frames=4)
    w = store.new_episode(robot_id="r1", task_id="push", features=frames.features, fps=30, fsync=False, start_time_ns=T0)
    for t in range(10):
        w.append(frames.tick(t, T0 + t * 33_000_000))
    ep = w.commit("success", "tester")
    reader = f"""
import resource
from data.store import EpisodeStore
from data.torch_dataset import EpisodeDataset
ds = EpisodeDataset(EpisodeStore({str(store_root)!r}, create=False), [{ep.episode_id!r}], horizon=4)
for i in range(3):  # first touches: the heap grows to what a sample needs
    ds[i]
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(30):
    item = ds[i % len(ds)]
assert item["observation.images.top"].shape == (3, 480, 640)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 30)
"""
    # a process of its own, as a training run's reader is (this one's allocator has a history)
    run = subprocess.run([sys.executable, "-c", reader], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr[-2000:]
    per_sample = float(run.stdout.split()[-1])
    assert per_sample < 300, per_sample  # one float frame alone is 900 pages; ~1400 a sample without
