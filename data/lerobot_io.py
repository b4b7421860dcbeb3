"""LeRobot v3 interchange, through lerobot's own LeRobotDataset API, offline.

Export writes any selection of committed episodes as a LeRobot v3 dataset with extra per-tick
columns: `action_source` (0 policy, 1 correction, 2 demonstration, 3 hold), `is_correction` and
the same flag as LeRobot names it, `is_intervention`, the real `timestamp_ns`, `policy_version`
(index into the episode's versions, -1 none) and any per-tick labels a training run adds (e.g.
`advantage_indicator`). Episode attributes LeRobot has no place for (outcome and who labelled it,
robot, task, policy versions, extra attributes) go to `meta/recap_episodes.json`; `robot_type` and
joint names (episode extra `robot_type`, `joint_names`) go to LeRobot's own metadata.

Invariants: an export never drops a frame. Videos are encoded from every written frame after each
episode (LeRobot's streaming encoder drops frames when its queue is full, so it is not used), and
after writing, the decoded frames of every camera are counted against the rows; any difference
raises ExportVerificationError. Import reads all of the above back; a dataset without the sidecar
(a foreign one) comes in as demonstrations, with `is_intervention` ticks as corrections.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from data.schema import ActionSource, CameraSpec, EpisodeFeatures, Outcome, Tick, check_name
from data.store import EpisodeStore

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub from here

IMAGE_PREFIX = "observation.images."
SIDECAR = "meta/recap_episodes.json"
SIDECAR_FORMAT = "recap-lerobot-export"
STATE_KEY, ACTION_KEY = "observation.state", "action"


class ExportVerificationError(RuntimeError):
    """A written LeRobot dataset does not hold what was exported (e.g. video frames missing)."""


def _lerobot():
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset


def _same(values: list, what: str, ids: Sequence[str]):
    """The one value all episodes share (None when none has one); refuses a mix."""
    distinct = {json.dumps(v, sort_keys=True) for v in values}
    if len(distinct) > 1:
        raise ValueError(f"the episodes differ in {what} ({ids[0]}: {values[0]!r}); export them separately")
    return values[0] if values else None


def export_lerobot(
    store: EpisodeStore,
    episode_ids: Sequence[str],
    out_dir: str | Path,
    *,
    repo_id: str = "local/recap-export",
    use_videos: bool = True,
    robot_type: str | None = None,
    extra_columns: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the episodes to `out_dir` as a LeRobot v3 dataset, verify it, and return its root.

    `extra_columns[name][episode_id]` is a per-tick float array (length = the episode's ticks).
    `robot_type` defaults to the episodes' own (extra `robot_type`)."""
    if not episode_ids:
        raise ValueError("no episodes selected for export")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    extra_columns = dict(extra_columns or {})
    infos = [store.open(eid).info for eid in episode_ids]
    feats, fps = infos[0].features, infos[0].fps
    for info in infos[1:]:
        if info.features != feats:
            raise ValueError(f"episode {info.episode_id} has other features than {episode_ids[0]}; export them separately")
        if info.fps != fps:
            raise ValueError(f"episode {info.episode_id} runs at {info.fps} fps, {episode_ids[0]} at {fps}")
    joint_names = _same([i.extra.get("joint_names") or {} for i in infos], "joint names", episode_ids) or {}
    if robot_type is None:
        robot_type = _same([i.extra.get("robot_type") for i in infos], "robot_type", episode_ids)
    features: dict[str, dict] = {
        STATE_KEY: {"dtype": "float32", "shape": (feats.state_dim,), "names": joint_names.get(STATE_KEY)},
        ACTION_KEY: {"dtype": "float32", "shape": (feats.action_dim,), "names": joint_names.get(ACTION_KEY)},
        "action_source": {"dtype": "int64", "shape": (1,), "names": None},
        "is_correction": {"dtype": "bool", "shape": (1,), "names": None},
        "is_intervention": {"dtype": "bool", "shape": (1,), "names": None},
        "policy_version": {"dtype": "int64", "shape": (1,), "names": None},
        "timestamp_ns": {"dtype": "int64", "shape": (1,), "names": None},
    }
    for name, cam in feats.cameras.items():
        features[IMAGE_PREFIX + name] = {"dtype": "video" if use_videos else "image", "shape": cam.shape,
                                         "names": ["height", "width", "channels"]}
    for col in extra_columns:
        features[col] = {"dtype": "float32", "shape": (1,), "names": None}

    # Not streaming: every frame is written first and each episode's videos encoded from all of them
    # (the streaming encoder drops frames under load). Image-writer threads only wait, never drop.
    ds = _lerobot().create(repo_id=repo_id, fps=int(round(fps)), features=features, root=out_dir,
                           robot_type=robot_type, use_videos=use_videos, streaming_encoding=False,
                           image_writer_threads=max(1, len(feats.cameras)) if feats.cameras else 0)
    sidecar: list[dict[str, Any]] = []
    try:
        for i, eid in enumerate(episode_ids):
            ep = store.open(eid)
            src = ep.action_source
            versions = ep.array("policy_version_index").astype(np.int64)
            cols = {}
            for col, per_ep in extra_columns.items():
                if eid not in per_ep:
                    raise KeyError(f"extra column {col!r} has no values for episode {eid}")
                cols[col] = np.asarray(per_ep[eid], np.float32).reshape(-1)
                if len(cols[col]) != len(ep):
                    raise ValueError(f"extra column {col!r} has {len(cols[col])} values for {len(ep)} ticks of {eid}")
            frames = {cam: ep.images(cam) for cam in ep.cameras}
            for t in range(len(ep)):
                corrected = np.array([src[t] == ActionSource.CORRECTION])
                frame = {
                    STATE_KEY: ep.state[t],
                    ACTION_KEY: ep.action[t],
                    "action_source": np.array([src[t]], np.int64),
                    "is_correction": corrected,
                    "is_intervention": corrected.copy(),
                    "policy_version": versions[t : t + 1],
                    "timestamp_ns": np.array([ep.timestamps_ns[t]], np.int64),
                    "task": ep.info.instruction or ep.info.task_id,
                }
                for cam, imgs in frames.items():
                    frame[IMAGE_PREFIX + cam] = imgs[t]
                for col, values in cols.items():
                    frame[col] = values[t : t + 1]
                ds.add_frame(frame)
            ds.save_episode()
            info = ep.info
            sidecar.append({
                "episode_index": i, "episode_id": info.episode_id, "robot_id": info.robot_id,
                "task_id": info.task_id, "instruction": info.instruction, "outcome": str(info.outcome),
                "outcome_labeller": info.outcome_labeller, "outcome_labelled_at_ns": info.outcome_labelled_at_ns,
                "start_time_ns": info.start_time_ns, "end_time_ns": info.end_time_ns, "num_ticks": len(ep),
                "policy_versions": list(info.policy_versions), "extra": info.extra,
            })
            if progress:
                progress(i + 1, len(episode_ids))
    finally:
        ds.finalize()
    (out_dir / SIDECAR).write_text(json.dumps({"format": SIDECAR_FORMAT, "version": 1, "episodes": sidecar}, indent=1))
    verify_export(out_dir, expected_rows=sum(e["num_ticks"] for e in sidecar))
    return out_dir


def count_video_frames(path: Path) -> int:
    """Frames decoded from a video file (PyAV): what a reader will actually get."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def verify_export(root: str | Path, *, expected_rows: int | None = None) -> dict[str, int]:
    """Count the rows of a written LeRobot dataset and the decoded frames of every camera's videos;
    raise ExportVerificationError on any difference. Returns {camera key: frames}."""
    import pyarrow.parquet as pq

    root = Path(root)
    info = json.loads((root / "meta" / "info.json").read_text())
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((root / "data").rglob("*.parquet")))
    problems = []
    if expected_rows is not None and rows != expected_rows:
        problems.append(f"{rows} rows written for {expected_rows} ticks")
    if info.get("total_frames") != rows:
        problems.append(f"info.json says {info.get('total_frames')} frames, the data holds {rows} rows")
    frames = {}
    for key, ft in info["features"].items():
        if ft.get("dtype") != "video":
            continue
        files = sorted((root / "videos" / key).rglob("*.mp4"))
        frames[key] = sum(count_video_frames(f) for f in files)
        if frames[key] != rows:
            problems.append(f"{key}: {frames[key]} video frames for {rows} rows")
    if problems:
        raise ExportVerificationError(f"the LeRobot export at {root.name} is incomplete: " + "; ".join(problems))
    return frames


def import_lerobot(
    root: str | Path,
    store: EpisodeStore,
    *,
    robot_id: str | None = None,
    task_id: str | None = None,
    repo_id: str = "local/recap-import",
    labeller: str = "lerobot-import",
    state_key: str = STATE_KEY,
    action_key: str = ACTION_KEY,
    keep_labels: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Read every episode of a local LeRobot v3 dataset into the store. Returns the new episode ids.

    A recap export comes back with its action sources, policy versions, robot, task, robot_type and
    joint names (`robot_id` / `task_id` override them); with `keep_labels` also with its outcomes,
    labellers and episode attributes (an operator's own export; never for uploads, whose labels only
    the API creates). Any other dataset comes in as demonstrations (ticks flagged `is_intervention` as
    corrections), under `robot_id` (required then). Without kept labels the outcome is success,
    labelled by `labeller`."""
    check_name("labeller", labeller)  # before any episode is written
    root = Path(root)
    ds = _lerobot()(repo_id, root=root)
    meta = ds.meta
    for key in (state_key, action_key):
        if key not in meta.features:
            raise KeyError(f"the LeRobot dataset at {root.name} has no feature {key!r}; features: {sorted(meta.features)}")
    sidecar_path = root / SIDECAR
    sidecar = {}
    if sidecar_path.is_file():
        doc = json.loads(sidecar_path.read_text())
        if doc.get("format") == SIDECAR_FORMAT:
            sidecar = {int(e["episode_index"]): e for e in doc["episodes"]}
    if keep_labels:  # a kept labeller is held to the store's rule before any episode is written, not at its commit
        for e in sidecar.values():
            if e.get("outcome_labeller") is not None:
                check_name(f"episode {e['episode_index']}: outcome_labeller", e["outcome_labeller"])
    if robot_id is None and not sidecar:
        raise ValueError("a robot id is needed to import a dataset that recap did not export")
    cameras = {}
    for key in meta.camera_keys:
        h, w, c = meta.features[key]["shape"]
        cameras[key.removeprefix(IMAGE_PREFIX)] = (key, CameraSpec(int(h), int(w), int(c)))
    feats = EpisodeFeatures(state_dim=int(meta.features[state_key]["shape"][0]),
                            action_dim=int(meta.features[action_key]["shape"][0]),
                            cameras={n: spec for n, (_, spec) in cameras.items()})
    names = {k: list(meta.features[k]["names"]) for k in (state_key, action_key)
             if isinstance(meta.features[k].get("names"), list)
             and len(meta.features[k]["names"]) == meta.features[k]["shape"][0]}
    hf = ds.hf_dataset
    columns = set(hf.column_names)
    ep_index = np.asarray(hf["episode_index"])
    new_ids = []
    episode_numbers = sorted(set(ep_index.tolist()))
    start_ns = time.time_ns()
    for n, e in enumerate(episode_numbers):
        rows = np.flatnonzero(ep_index == e)
        first = ds[int(rows[0])]
        task_text = str(first.get("task", ""))
        side = sidecar.get(int(e), {})
        extra = dict(side.get("extra", {})) if keep_labels else {}
        extra.pop("source_counts", None)  # counted again at commit
        extra.update({"imported_from": root.name, "lerobot_episode_index": int(e)})
        if side:
            extra["exported_episode_id"] = side["episode_id"]
        if meta.robot_type:
            extra["robot_type"] = meta.robot_type
        if names:
            extra["joint_names"] = names
        ep_start = int(side.get("start_time_ns", start_ns))
        versions = list(side.get("policy_versions", []))
        w = store.new_episode(robot_id=robot_id or side["robot_id"],
                              task_id=task_id or side.get("task_id") or _task_id(task_text), features=feats,
                              fps=float(meta.fps), instruction=side.get("instruction", task_text),
                              start_time_ns=ep_start, extra=extra)
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
                if "timestamp_ns" in columns:
                    ts = int(item["timestamp_ns"])
                else:
                    ts = ep_start + 1 + int(round(float(item["timestamp"]) * 1e9))
                if "action_source" in columns:
                    source = ActionSource(int(item["action_source"]))
                elif "is_intervention" in columns and bool(item["is_intervention"]):
                    source = ActionSource.CORRECTION
                else:
                    source = ActionSource.DEMONSTRATION
                version = None
                if "policy_version" in columns and 0 <= int(item["policy_version"]) < len(versions):
                    version = versions[int(item["policy_version"])]
                w.append(Tick(ts, np.asarray(item[state_key]), np.asarray(item[action_key]), source, images,
                              policy_version=version))
            if side and keep_labels:
                info = w.commit(Outcome(side["outcome"]), side.get("outcome_labeller"))
            else:
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
