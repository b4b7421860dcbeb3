"""RECAP, as in "π*0.6: a VLA that learns from experience" (2025), read top to bottom:
rewards -> normalised returns -> value targets (two-hot over bins) -> N-step advantages ->
per-task thresholds -> advantage indicators (corrections forced positive) -> conditioned policy.

Ticks are 0-based: an episode has ticks t = 0 .. T-1 and the outcome lands on the last one.
The hyper-parameters (RecapConfig, every default the design's, DESIGN.md §5) live in the torch-free
training/recap_config.py, so the API checks a recipe without the model stack.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from data.schema import ActionSource, Outcome
from training.recap_config import RecapConfig  # noqa: F401  (torch-free; re-exported here)


# -- (1) rewards and returns -------------------------------------------------------------------

def rewards(T: int, outcome: Outcome | str, c_fail: float) -> np.ndarray:
    """r_t = -1 for t < T-1; r_{T-1} = 0 on success, -C_fail on failure."""
    outcome = Outcome(outcome)
    if outcome == Outcome.UNKNOWN:
        raise ValueError("episodes with unknown outcome have no return; exclude them")
    if T < 1:
        raise ValueError(f"an episode of {T} ticks has no return; exclude it")
    r = -np.ones(T, np.float64)
    r[-1] = 0.0 if outcome == Outcome.SUCCESS else -float(c_fail)
    return r


def returns_to_go(r: np.ndarray) -> np.ndarray:
    """Undiscounted R_t = sum_{t' >= t} r_t'."""
    return np.cumsum(r[::-1])[::-1].copy()


def normalisation(max_len: int, c_fail: float | None) -> tuple[float, float]:
    """(C_fail, Z) for a task: Z = L + C_fail, with C_fail = L by default."""
    c = float(max_len if c_fail is None else c_fail)
    return c, float(max_len) + c


def normalised_returns(T: int, outcome: Outcome | str, max_len: int, c_fail: float | None = None) -> np.ndarray:
    """R_t / Z clipped to [-1, 0]: successes land in (-0.5, 0], failures in [-1, -0.5] by default."""
    c, z = normalisation(max_len, c_fail)
    return np.clip(returns_to_go(rewards(T, outcome, c)) / z, -1.0, 0.0)


# -- (2) value targets: two-hot projection onto B bins spanning [-1, 0] ------------------------

def bin_centers(num_bins: int) -> torch.Tensor:
    return torch.linspace(-1.0, 0.0, num_bins)


def two_hot(values: torch.Tensor, num_bins: int) -> torch.Tensor:
    """Probability mass split between the two nearest bins, so that the expectation is exact."""
    v = values.clamp(-1.0, 0.0)
    pos = (v + 1.0) * (num_bins - 1)  # in [0, B-1]
    lo = pos.floor().long().clamp(0, num_bins - 1)
    hi = (lo + 1).clamp(max=num_bins - 1)
    w_hi = (pos - lo.float())
    target = torch.zeros(*v.shape, num_bins, dtype=torch.float32, device=v.device)
    target.scatter_add_(-1, lo.unsqueeze(-1), (1.0 - w_hi).unsqueeze(-1))
    target.scatter_add_(-1, hi.unsqueeze(-1), w_hi.unsqueeze(-1))
    return target


def value_loss(logits: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between V's bin distribution and the two-hot target of the MC return."""
    target = two_hot(returns, logits.shape[-1])
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def expected_value(logits: torch.Tensor) -> torch.Tensor:
    """V(o) = sum_b p_b * center_b."""
    return (F.softmax(logits, dim=-1) * bin_centers(logits.shape[-1]).to(logits.device)).sum(-1)


# -- (3) advantages and indicators -----------------------------------------------------------

def n_step_advantages(values: np.ndarray, T: int, outcome: Outcome | str, horizon: int, max_len: int,
                      c_fail: float | None = None) -> np.ndarray:
    """A_t = (sum_{t'=t}^{t+N-1} r_t') / Z + V(o_{t+N}) - V(o_t); the window stops at the episode
    end, where V after the end is 0. `values` are V(o_t) for t = 0..T-1 (normalised units)."""
    c, z = normalisation(max_len, c_fail)
    r = rewards(T, outcome, c) / z
    csum = np.concatenate([[0.0], np.cumsum(r)])
    t = np.arange(T)
    end = np.minimum(t + horizon, T)
    window = csum[end] - csum[t]
    v_next = np.where(t + horizon < T, values[np.minimum(t + horizon, T - 1)], 0.0)
    return window + v_next - values


def thresholds(advantages: Mapping[str, np.ndarray], positive_fraction: float | Mapping[str, float]) -> dict[str, float]:
    """Per-task eps_l: the (1 - fraction) quantile of that task's advantages, so that the target
    share of its steps is labelled positive (one fraction for every task, or one per task)."""
    frac = positive_fraction if isinstance(positive_fraction, Mapping) else dict.fromkeys(advantages, positive_fraction)
    return {task: float(np.quantile(a, 1.0 - frac[task])) if len(a) else 0.0 for task, a in advantages.items()}


def indicators(advantages: np.ndarray, eps: float, sources: np.ndarray) -> np.ndarray:
    """I_t = 1[A_t > eps_l]; steps whose action came from a human correction are always positive."""
    ind = advantages > eps
    return ind | (sources == ActionSource.CORRECTION)


# -- (4) the conditioned policy's indicator input --------------------------------------------

INDICATOR_NEGATIVE, INDICATOR_POSITIVE, INDICATOR_NONE = 0, 1, 2  # embedding ids; NONE = unconditional


def drop_indicators(ind: torch.Tensor, dropout: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace the indicator by 'unconditional' for a `dropout` share of samples, so the same model
    also learns pi(a | o, l) (needed for classifier-free guidance)."""
    mask = torch.rand(ind.shape, generator=generator, device=ind.device) < dropout
    return torch.where(mask, torch.full_like(ind, INDICATOR_NONE), ind)


def advantage_prompt(task_text: str, indicator: int) -> str:
    """Language-conditioned policies get the indicator as text appended to the task prompt."""
    if indicator == INDICATOR_NONE:
        return task_text
    return f"{task_text}\nAdvantage: {'positive' if indicator == INDICATOR_POSITIVE else 'negative'}"


def guided_velocity(v_uncond: torch.Tensor, v_pos: torch.Tensor, beta: float) -> torch.Tensor:
    """Classifier-free guidance on the flow-matching velocity: v = v_u + beta (v_pos - v_u)."""
    return v_uncond + beta * (v_pos - v_uncond)


def positive_rate_by_position(ind: Sequence[np.ndarray], outcomes: Sequence[str], outcome: str = "failure",
                              parts: int = 4) -> list[float]:
    """Diagnostic: share of positive labels in each `parts`-th of the episodes of `outcome`, by
    position within the episode (a time-blind V labels the end of a timeout positive: the last
    quarter of failed episodes should be mostly negative)."""
    hits, counts = np.zeros(parts), np.zeros(parts)
    for i, oc in zip(ind, outcomes):
        if Outcome(oc) != Outcome(outcome) or len(i) == 0:
            continue
        q = np.minimum((np.arange(len(i)) * parts) // len(i), parts - 1)
        hits += np.bincount(q, weights=i.astype(float), minlength=parts)
        counts += np.bincount(q, minlength=parts)
    return [float(h / c) if c else float("nan") for h, c in zip(hits, counts)]


POSITIVE_SOURCES = ("demonstration", "correction", "policy_success", "policy_failure")


def positives_by_source(ind: np.ndarray, sources: np.ndarray, outcomes: np.ndarray,
                        keep: np.ndarray | None = None) -> dict[str, dict]:
    """Diagnostic: where the positive labels come from. Per group of ticks (demonstrations, corrections,
    the policy's own ticks in successful and in failed episodes): its ticks, its positive rate and its
    share of all positives. A conditioned policy learns "positive" behaviour from these; when the policy's
    ticks in failed episodes supply most of them (a target positive share above the data's success
    share), the positive-conditioned policy is largely the failing policy again. `ind`, `sources`,
    `outcomes` (the episode's outcome): per tick; `keep`: the ticks the policy trains on (holds and masked
    ticks are not), None = all. The policy's ticks in episodes of unknown outcome are in neither policy group."""
    ind, sources, outcomes = np.asarray(ind, bool), np.asarray(sources), np.asarray(outcomes, dtype=object)
    keep = np.ones(len(ind), bool) if keep is None else np.asarray(keep, bool)
    ind = ind & keep
    policy = (sources == ActionSource.POLICY) & keep
    groups = {"demonstration": (sources == ActionSource.DEMONSTRATION) & keep,
              "correction": (sources == ActionSource.CORRECTION) & keep,
              "policy_success": policy & (outcomes == Outcome.SUCCESS), "policy_failure": policy & (outcomes == Outcome.FAILURE)}
    total = int(ind.sum())
    return {name: {"ticks": int(m.sum()), "positive_rate": float(ind[m].mean()) if m.any() else float("nan"),
                   "share_of_positives": float(ind[m].sum() / total) if total else float("nan")}
            for name, m in groups.items()}


def positive_rate_by_outcome(ind: Sequence[np.ndarray], outcomes: Sequence[str]) -> dict[str, float]:
    """Diagnostic: share of positive labels in successful vs failed episodes (should differ)."""
    out = {}
    for o in (Outcome.SUCCESS, Outcome.FAILURE):
        sel = [i for i, oc in zip(ind, outcomes) if Outcome(oc) == o]
        out[str(o)] = float(np.concatenate(sel).mean()) if sel else float("nan")
    return out
