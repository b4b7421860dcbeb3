"""Shared helpers for the data tests: small synthetic episodes written through the real writer."""

from __future__ import annotations

import numpy as np

from data.schema import ActionSource, Outcome
from data.store import EpisodeStore
from data.synthetic import SyntheticFrames, features

T0 = 1_700_000_000_000_000_000
PERIOD = 33_333_333


def small_features(cameras: int = 2, proposed_chunk: int = 1):
    return features(cameras, 48, 64, state_dim=4, action_dim=3, proposed_chunk=proposed_chunk)


def record(store: EpisodeStore, *, ticks: int = 25, robot: str = "r1", task: str = "push", cameras: int = 2,
           outcome: Outcome = Outcome.SUCCESS, corrections: range = range(0), version: str | None = "v1",
           flush_ticks: int = 10, start: int = T0, fsync: bool = False):
    feats = small_features(cameras)
    frames = SyntheticFrames(feats, n_frames=8)
    w = store.new_episode(robot_id=robot, task_id=task, features=feats, fps=30, instruction=f"{task} it",
                          flush_ticks=flush_ticks, fsync=fsync, start_time_ns=start)
    for t in range(ticks):
        src = ActionSource.CORRECTION if t in corrections else ActionSource.POLICY
        w.append(frames.tick(t, start + t * PERIOD, src, None if src == ActionSource.CORRECTION else version))
    info = w.commit(outcome, "tester")
    return store.open(info.episode_id), frames


def assert_images_close(a: np.ndarray, b: np.ndarray, tol: float = 6.0):
    """JPEG q90: mean absolute error a few grey levels."""
    err = np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()
    assert err < tol, f"mean abs image error {err:.2f} >= {tol}"


def run_cli(args: list[str], env: dict[str, str], stdout: str, stderr: str) -> None:
    """`recap ARGS` in this process, as `python -m data.cli_root ARGS` runs it, with this environment and
    its output appended to these files (a multiprocessing target: the exit code is the command's)."""
    import os
    import sys

    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = ["recap", *args]
    from data.cli_root import main

    main()
