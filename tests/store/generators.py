"""Episodes the LeRobot and degenerate-data tests and the reliability probes share.

`labelled_episode` writes one episode through the real writer with everything a LeRobot round trip
must keep (outcome and labeller, every action source, two policy versions, robot_type, joint names,
a dotted camera name). `write_degenerate` puts an episode the writer would refuse into a store the
way an older store (or another path) holds it: valid files and manifest, bad contents.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import numpy as np
import zarr
from zarr.storage import LocalStore

from data.schema import (ACTION, STATE, TIMESTAMP, ActionSource, CameraSpec, EpisodeFeatures, EpisodeInfo, EpisodeStatus,
                         Outcome)
from data.store import EpisodeData, EpisodeStore, write_manifest
from data.synthetic import SyntheticFrames

T0 = 1_700_000_000_000_000_000
PERIOD = 33_333_333
JOINTS = ["shoulder", "elbow", "wrist", "gripper"]
ACTIONS = ["d_shoulder", "d_elbow", "gripper"]


def camera_features(cameras=("top", "wrist.left"), height=48, width=64) -> EpisodeFeatures:
    return EpisodeFeatures(len(JOINTS), len(ACTIONS), {c: CameraSpec(height, width) for c in cameras})


def labelled_episode(store: EpisodeStore, *, ticks: int = 24, robot: str = "so100-a", task: str = "stack",
                     outcome: Outcome = Outcome.FAILURE, labeller: str = "alice", start: int = T0,
                     cameras=("top", "wrist.left"), seed: int = 0) -> EpisodeData:
    feats = camera_features(cameras)
    frames = SyntheticFrames(feats, n_frames=8, seed=seed)
    w = store.new_episode(robot_id=robot, task_id=task, features=feats, fps=30, instruction=f"{task} the cubes",
                          fsync=False, start_time_ns=start,
                          extra={"robot_type": "so100", "joint_names": {"observation.state": JOINTS, "action": ACTIONS},
                                 "operator": "bob"})
    sources = [ActionSource.POLICY, ActionSource.CORRECTION, ActionSource.HOLD, ActionSource.DEMONSTRATION]
    for t in range(ticks):
        src = sources[(t // 3) % len(sources)]
        version = {ActionSource.POLICY: "v1" if t < ticks // 2 else "v2", ActionSource.HOLD: "v1"}.get(src)
        w.append(frames.tick(t, start + t * PERIOD, src, version))
    info = w.commit(outcome, labeller)
    return store.open(info.episode_id)


# -- degenerate episodes -----------------------------------------------------------------------

DEGENERATE_KINDS = ("empty", "one_tick", "nan_state", "inf_action", "short_arrays")


def write_degenerate(store: EpisodeStore, kind: str, *, robot: str = "r1", task: str = "push", index: int = 0,
                     state_dim: int = 3, action_dim: int = 2, outcome: Outcome = Outcome.FAILURE) -> str:
    """Write a committed (manifest and all) episode of `kind` straight into the store's files, as an
    older store or another writer may hold it. Returns its id."""
    n = {"empty": 0, "one_tick": 1}.get(kind, 12)
    rows = n - 4 if kind == "short_arrays" else n  # the arrays hold fewer ticks than the attributes say
    eid = f"20240101T000000-{robot}-deg{index:03d}-{kind.replace('_', '-')}"
    path = store.episode_dir(eid)
    start = T0 + index * 10**12
    feats = EpisodeFeatures(state_dim, action_dim)
    state = np.linspace(0, 1, max(rows, 0) * state_dim, dtype=np.float32).reshape(rows, state_dim)
    action = np.full((rows, action_dim), 0.5, np.float32)
    if kind == "nan_state" and rows:
        state[rows // 2, 0] = np.nan
    if kind == "inf_action" and rows:
        action[rows - 1, 1] = np.inf
    arrays = {TIMESTAMP: np.arange(rows, dtype=np.int64) * PERIOD + start, STATE: state, ACTION: action,
              "action_source": np.zeros(rows, np.uint8), "proposed_action": np.full((rows, 1, action_dim), np.nan, np.float32),
              "policy_version_index": np.full(rows, -1, np.int16)}
    info = EpisodeInfo(episode_id=eid, robot_id=robot, task_id=task, instruction=f"{task} it", fps=30.0, features=feats,
                       start_time_ns=start, end_time_ns=start + max(n - 1, 0) * PERIOD, num_ticks=n,
                       status=EpisodeStatus.COMPLETE, outcome=outcome, outcome_labeller="old-recorder",
                       outcome_labelled_at_ns=start, extra={"degenerate": kind})
    group = zarr.create_group(LocalStore(path), attributes=info.to_attrs())
    for name, data in arrays.items():
        arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=(max(rows, 1), *data.shape[1:]))
        if rows:
            arr[:] = data
    written = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            full = os.path.join(dirpath, f)
            key = os.path.relpath(full, path)
            written[key] = (hashlib.sha256(open(full, "rb").read()).hexdigest(), os.path.getsize(full))
    write_manifest(path, info, written, fsync=False)
    return eid


# -- CPU load ----------------------------------------------------------------------------------

class BusyLoops:
    """`n` processes spinning on the CPU for as long as the context lasts (stopped by their pids)."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self) -> "BusyLoops":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


ROUND_TRIP_FIELDS = ("robot_id", "task_id", "instruction", "fps", "features", "start_time_ns", "end_time_ns",
                     "num_ticks", "outcome", "outcome_labeller", "policy_versions")


def round_trip_differences(a: EpisodeData, b: EpisodeData) -> list[str]:
    """Names of what episode `b` (read back from a LeRobot export of `a`) lost or changed; images are
    compared by the tests (a video codec is lossy)."""
    ia, ib = a.info, b.info
    lost = [f for f in ROUND_TRIP_FIELDS if getattr(ib, f) != getattr(ia, f)]
    lost += [f"extra.{k}" for k in ("robot_type", "joint_names") if ib.extra.get(k) != ia.extra.get(k)]
    if ib.extra.get("exported_episode_id") != ia.episode_id:
        lost.append("episode id")
    for name in ("timestamps_ns", "state", "action", "action_source"):
        x, y = getattr(a, name), getattr(b, name)
        if x.shape != y.shape or not np.array_equal(x, y):
            lost.append(name)
    if [b.policy_version(t) for t in range(len(b))] != [a.policy_version(t) for t in range(len(a))]:
        lost.append("policy version per tick")
    if b.cameras != a.cameras:
        lost.append("cameras")
    return lost
