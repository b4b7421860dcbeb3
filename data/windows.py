"""Training windows over one episode's arrays (numpy only, so the robot side can use them too)."""

from __future__ import annotations

import numpy as np


def action_chunk(actions: np.ndarray, t: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """The next `horizon` executed actions from tick t, padded past the end by repeating the last
    action, and a mask that is True where the action is padding."""
    T = len(actions)
    idx = np.arange(t, t + horizon)
    pad = idx >= T
    return actions[np.minimum(idx, T - 1)], pad


def history(values: np.ndarray, t: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """`length` samples ending at tick t (oldest first), padded before the start by repeating the
    first sample, and a mask that is True where the sample is padding."""
    idx = np.arange(t - length + 1, t + 1)
    pad = idx < 0
    return values[np.maximum(idx, 0)], pad
