"""The corrective teleoperator's rule: when to take over from the policy, for how long, and the
budget. One implementation, shared by the training harness and the ROS 2 teleoperator node.

Calibrated on Meta-World (shared/notes/metaworld.md): the policy is "going wrong" when its
motion disagrees with the expert's by more than `deviation` for `patience` consecutive ticks,
or when the hand has not moved for `stall_ticks`. The human then drives `takeover_ticks` ticks
and hands back. At most `max_takeovers` per episode and `round_budget` correction ticks per round.

Like a person, it takes over late: the mistake (the first tick of the deviation it waited `patience`
ticks on, or the first tick of the stall window) comes before the takeover. On the tick it takes over,
`mistake_lag` says how many ticks earlier the mistake was and `mistake_why` which condition held (the
station records it with the episode: data/effort.py's mistake to takeover); None on every other tick.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TakeoverRule:
    deviation: float = 1.0
    patience: int = 8
    stall_ticks: int = 25
    stall_motion: float = 0.004  # metres of hand motion that count as "moving"
    takeover_ticks: int = 25
    max_takeovers: int = 3
    round_budget: int = 10_000

    def __post_init__(self) -> None:
        self.round_used = 0
        self.reset_episode()

    def reset_episode(self) -> None:
        self.mistake_lag: int | None = None
        self.mistake_why = ""
        self._bad = 0
        self._engaged = 0
        self.takeovers = 0
        self._hand_hist: list[np.ndarray] = []

    def reset_round(self) -> None:
        self.round_used = 0

    @property
    def engaged(self) -> bool:
        return self._engaged > 0

    def update(self, hand_pos: np.ndarray, policy_action: np.ndarray | None, expert_action: np.ndarray) -> bool:
        """Call once per tick before acting; True when the human drives this tick."""
        self.mistake_lag = None
        self._hand_hist.append(np.asarray(hand_pos, np.float64))
        if len(self._hand_hist) > self.stall_ticks:
            self._hand_hist.pop(0)
        if self._engaged > 0:
            self._engaged -= 1
            self.round_used += 1
            return True
        if policy_action is None:
            return False
        dev = float(np.linalg.norm(np.asarray(policy_action[:3]) - np.asarray(expert_action[:3])))
        self._bad = self._bad + 1 if dev > self.deviation else 0
        stalled = (len(self._hand_hist) == self.stall_ticks
                   and np.linalg.norm(self._hand_hist[-1] - self._hand_hist[0]) < self.stall_motion)
        if (self._bad >= self.patience or stalled) and self.takeovers < self.max_takeovers \
                and self.round_used + self.takeover_ticks <= self.round_budget:
            self.takeovers += 1
            # ticks back to where the condition first held: the deviation's first tick, the stall window's first
            lags = {"deviation": self._bad - 1 if self._bad >= self.patience else -1,
                    "stall": len(self._hand_hist) - 1 if stalled else -1}
            self.mistake_why = max(lags, key=lags.get)
            self.mistake_lag = lags[self.mistake_why]
            self._bad = 0
            self._hand_hist.clear()
            self._engaged = self.takeover_ticks - 1
            self.round_used += 1
            return True
        return False


def unstick_gripper(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Meta-World's experts close the gripper too early when they take over with the hand low over
    a resting object; opening it while the hand is above the object lets them recover
    (push 37 -> 46, pick-place 43 -> 49 of 50 in our measurement)."""
    hand, obj = obs[:3], obs[4:7]
    gripper_closed = obs[3] < 0.6
    above = np.linalg.norm(hand[:2] - obj[:2]) < 0.03 and hand[2] - obj[2] > 0.045
    if gripper_closed and above and obj[2] < 0.03:
        action = action.copy()
        action[3] = -1.0
    return action
