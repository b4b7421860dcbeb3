"""What a served policy may be given and what it may answer, from its artifact's normalisation
statistics: one check, applied by the server to every runtime (native and LeRobot alike).

Observations: every state value must be finite and within STATE_LIMIT_STDS standard deviations of
the training mean, |x - mean| <= STATE_LIMIT_STDS * max(std, 0.01) (the 0.01 floor is FeatureStats'
own, so a feature constant in the data may move by 1 unit). Further out is a sensor fault, an
overflow or a units mistake, never a state the policy was trained on: the request is refused with a
422 naming the value (`state[3]: 3e+38 is outside [-1.2, 3.4]`) and nothing reaches the model.

Actions: a chunk holding a non-finite value is never sent; the request is answered with a 422 and
counted (recap_inference_nonfinite_actions_total). A finite chunk is clipped (not refused: the robot
would only hold) to the range of the training actions, [min, max] where the artifact records it,
else mean +- ACTION_LIMIT_STDS * std; the answer then carries the flag "actions_clipped" and the
clip is counted (recap_inference_actions_clipped_total). A feature without statistics is checked
for finiteness only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from data.wire import WireError

STATE_LIMIT_STDS = 100.0
ACTION_LIMIT_STDS = 10.0
MIN_STD = 1e-2  # as data.stats.FeatureStats.MIN_STD
FLOAT32_MAX = float(np.finfo(np.float32).max)


class NonFiniteActions(WireError):
    def __init__(self):
        super().__init__(422, "the policy's answer to this observation was not finite; nothing was sent")


def _vec(stats: Mapping | None, key: str) -> np.ndarray | None:
    if not stats or stats.get(key) is None:
        return None
    v = stats[key]
    v = v.detach().cpu().numpy() if hasattr(v, "detach") else v
    return np.asarray(v, np.float64).reshape(-1)


@dataclass(frozen=True)
class Envelope:
    """Per-dimension ranges: observations outside [state_low, state_high] are refused, actions are
    clipped to [action_low, action_high]; None where the artifact has no statistics."""

    state_low: tuple[float, ...] | None = None
    state_high: tuple[float, ...] | None = None
    action_low: tuple[float, ...] | None = None
    action_high: tuple[float, ...] | None = None

    @classmethod
    def from_stats(cls, state: Mapping | None, action: Mapping | None) -> "Envelope":
        """`state`, `action`: a feature's statistics as a mapping (mean, std and, if known, min, max)."""
        s_lo = s_hi = a_lo = a_hi = None
        mean, std = _vec(state, "mean"), _vec(state, "std")
        if mean is not None and std is not None:
            w = STATE_LIMIT_STDS * np.maximum(std, MIN_STD)
            s_lo, s_hi = tuple((mean - w).tolist()), tuple((mean + w).tolist())
        lo, hi = _vec(action, "min"), _vec(action, "max")
        if lo is None or hi is None:
            mean, std = _vec(action, "mean"), _vec(action, "std")
            if mean is not None and std is not None:
                w = ACTION_LIMIT_STDS * np.maximum(std, MIN_STD)
                lo, hi = mean - w, mean + w
        if lo is not None and hi is not None:
            a_lo, a_hi = tuple(lo.tolist()), tuple(hi.tolist())
        return cls(s_lo, s_hi, a_lo, a_hi)

    def check_state(self, state: np.ndarray, name: str = "state") -> None:
        """WireError(422) naming the first value that is not finite or out of range."""
        x = np.asarray(state, np.float64)
        lo = np.asarray(self.state_low if self.state_low is not None else -FLOAT32_MAX)
        hi = np.asarray(self.state_high if self.state_high is not None else FLOAT32_MAX)
        bad = ~np.isfinite(x) | (x < lo) | (x > hi)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            if not np.isfinite(x[i]):
                raise WireError(422, f"{name}[{i}]: {x[i]} is not finite (NaN or infinity)")
            raise WireError(422, f"{name}[{i}]: {x[i]:.6g} is outside [{np.broadcast_to(lo, x.shape)[i]:.6g}, "
                                 f"{np.broadcast_to(hi, x.shape)[i]:.6g}] (the policy's training range, widened)")

    def bound_actions(self, actions: np.ndarray) -> tuple[np.ndarray, bool]:
        """(actions within the action range, whether any was clipped); NonFiniteActions if any value
        is NaN or infinite."""
        a = np.asarray(actions, np.float32)
        if not np.isfinite(a).all():
            raise NonFiniteActions()
        if self.action_low is None:
            return a, False
        lo, hi = np.asarray(self.action_low, np.float32), np.asarray(self.action_high, np.float32)
        clipped = np.clip(a, lo, hi)
        return clipped, bool((clipped != a).any())

    def to_dict(self) -> dict:
        return {"state_low": self.state_low, "state_high": self.state_high,
                "action_low": self.action_low, "action_high": self.action_high}
