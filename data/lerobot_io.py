"""LeRobot v3 interchange, through lerobot's own LeRobotDataset API, offline.

Export writes any selection of committed episodes as a LeRobot v3 dataset with extra columns:
`action_source` (0 policy, 1 correction, 2 demonstration, 3 hold), `is_correction`, the real
`timestamp_ns`, and any per-tick labels a training run adds (e.g. `advantage_indicator`).
Import reads a LeRobot v3 dataset in as demonstrations.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from data.schema import ActionSource, CameraSpec, EpisodeFeatures, Outcome, Tick
from data.store import EpisodeStore

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from here

IMAGE_PREFIX = "observation.images."


def _lerobot():
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset


def export_lerobot(
    store: EpisodeStore,
    episode_ids: Sequence[str],
    out_dir: str | Path,
    *,
    repo_id: str = "local/recap-export",
    use_videos: bool = True,
    extra_columns: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the episodes to `out_dir` as a LeRobot v3 dataset and return its root.

    `extra_columns[name][episode_id]` is a per-tick float array (length = the episode's ticks)."""
    if not episode_ids:
        raise ValueError("no episodes selected for export")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    extra_columns = dict(extra_columns or {})
    first = store.open(episode_ids[0])
    feats = first.info.features
    fps = first.info.fps
    for eid in episode_ids[1:]:
        info = store.open(eid).info
        if info.features != feats:
            raise ValueError(f"episode {eid} has other features than {episode_ids[0]}; export them separately")
        if info.fps != fps:
            raise ValueError(f"episode {eid} runs at {info.fps} fps, {episode_ids[0]} at {fps}")
    features: dict[str, dict] = {
        "observation.state": {"dtype": "float32", "shape": (feats.state_dim,), "names": None},
        "action": {"dtype": "float32", "shape": (feats.action_dim,), "names": None},
        "action_source": {"dtype": "int64", "shape": (1,), "names": None},
        "is_correction": {"dtype": "bool", "shape": (1,), "names": None},
        "timestamp_ns": {"dtype": "int64", "shape": (1,), "names": None},
    }
    for name, cam in feats.cameras.items():
        features[IMAGE_PREFIX + name] = {"dtype": "video" if use_videos else "image", "shape": cam.shape,
                                         "names": ["height", "width", "channels"]}
    for col in extra_columns:
        features[col] = {"dtype": "float32", "shape": (1,), "names": None}

    ds = _lerobot().create(repo_id=repo_id, fps=int(round(fps)), features=features, root=out_dir,
                           use_videos=use_videos, streaming_encoding=use_videos)
    try:
        for i, eid in enumerate(episode_ids):
            ep = store.open(eid)
            src = ep.action_source
            cols = {}
            for col, per_ep in extra_columns.items():
                if eid not in per_ep:
                    raise KeyError(f"extra column {col!r} has no values for episode {eid}")
                cols[col] = np.asarray(per_ep[eid], np.float32).reshape(-1)
                if len(cols[col]) != len(ep):
                    raise ValueError(f"extra column {col!r} has {len(cols[col])} values for {len(ep)} ticks of {eid}")
            frames = {cam: ep.images(cam) for cam in ep.cameras}
            for t in range(len(ep)):
                frame = {
                    "observation.state": ep.state[t],
                    "action": ep.action[t],
                    "action_source": np.array([src[t]], np.int64),
                    "is_correction": np.array([src[t] == ActionSource.CORRECTION]),
                    "timestamp_ns": np.array([ep.timestamps_ns[t]], np.int64),
                    "task": ep.info.instruction or ep.info.task_id,
                }
                for cam, imgs in frames.items():
                    frame[IMAGE_PREFIX + cam] = imgs[t]
                for col, values in cols.items():
                    frame[col] = values[t : t + 1]
                ds.add_frame(frame)
            ds.save_episode()
            if progress:
                progress(i + 1, len(episode_ids))
    finally:
        ds.finalize()
    return out_dir


def import_lerobot(
    root: str | Path,
    store: EpisodeStore,
    *,
    robot_id: str,
    task_id: str | None = None,
    repo_id: str = "local/recap-import",
    labeller: str = "lerobot-import",
    state_key: str = "observation.state",
    action_key: str = "action",
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Read every episode of a local LeRobot v3 dataset into the store as demonstrations
    (outcome: success, labelled by `labeller`). Returns the new episode ids."""
    ds = _lerobot()(repo_id, root=Path(root))
    meta = ds.meta
    for key in (state_key, action_key):
        if key not in meta.features:
            raise KeyError(f"the LeRobot dataset at {root} has no feature {key!r}; features: {sorted(meta.features)}")
    cameras = {}
    for key in meta.camera_keys:
        h, w, c = meta.features[key]["shape"]
        cameras[key.removeprefix(IMAGE_PREFIX).replace(".", "_")] = (key, CameraSpec(int(h), int(w), int(c)))
    feats = EpisodeFeatures(state_dim=int(meta.features[state_key]["shape"][0]),
                            action_dim=int(meta.features[action_key]["shape"][0]),
                            cameras={n: spec for n, (_, spec) in cameras.items()})
    hf = ds.hf_dataset
    ep_index = np.asarray(hf["episode_index"])
    new_ids = []
    episode_numbers = sorted(set(ep_index.tolist()))
    start_ns = time.time_ns()
    for n, e in enumerate(episode_numbers):
        rows = np.flatnonzero(ep_index == e)
        first = ds[int(rows[0])]
        task_text = str(first.get("task", ""))
        w = store.new_episode(robot_id=robot_id, task_id=task_id or _task_id(task_text), features=feats,
                              fps=float(meta.fps), instruction=task_text, start_time_ns=start_ns,
                              extra={"imported_from": str(root), "lerobot_episode_index": int(e)})
        try:
            for r in rows:
                item = ds[int(r)]
                images = {}
                for name, (key, _) in cameras.items():
                    img = item[key]
                    img = img.numpy() if hasattr(img, "numpy") else np.asarray(img)
                    if img.dtype != np.uint8:  # LeRobot returns float CHW in [0, 1]
                        img = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
                    images[name] = np.ascontiguousarray(img.transpose(1, 2, 0)) if img.shape[0] in (1, 3) else img
                ts = start_ns + int(round(float(item["timestamp"]) * 1e9))
                w.append(Tick(ts + 1, np.asarray(item[state_key]), np.asarray(item[action_key]),
                              ActionSource.DEMONSTRATION, images))
            info = w.commit(Outcome.SUCCESS, labeller)
        except BaseException:
            w.abandon()
            raise
        new_ids.append(info.episode_id)
        start_ns = (info.end_time_ns or start_ns) + 1_000_000_000
        if progress:
            progress(n + 1, len(episode_numbers))
    return new_ids


def _task_id(text: str) -> str:
    slug = "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return (slug or "imported")[:64]
