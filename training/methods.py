"""The methods compared on one code path (DESIGN §5): which ticks each trains on, with which
indicator and weight. All use the same policy, trainer and data."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from data.schema import ActionSource, Outcome
from training import recap
from training.advantages import AdvantageLabels
from training.steps import StepTable


class Method(StrEnum):
    BC = "bc"  # demonstrations only
    HG_DAGGER = "hg_dagger"  # demonstrations + human corrections
    FILTERED_BC = "filtered_bc"  # demonstrations + successful episodes + corrections
    AWR = "awr"  # all data, weights exp(A / tau), clipped
    RECAP = "recap"  # all data, advantage indicator as input

    @property
    def needs_value(self) -> bool:
        return self in (Method.AWR, Method.RECAP)


@dataclass
class PolicyData:
    index: np.ndarray  # flat tick indices to train on
    indicator: np.ndarray  # per selected tick: recap.INDICATOR_*
    weight: np.ndarray | None  # per selected tick, or None


AWR_TEMPERATURE = 0.05  # in normalised-return units (a step is ~1/(2L))
AWR_MAX_WEIGHT = 20.0


def leaves_negatives_out(negative_weight: float) -> bool:
    """Whether RECAP's negative-labelled ticks are left out of the fit: weight 0, or too small for the loss's float32."""
    return bool(np.float32(negative_weight) == 0)


def policy_data(table: StepTable, method: Method, labels: AdvantageLabels | None = None,
                *, first_fit: bool = False, negative_weight: float = 1.0) -> PolicyData:
    """`first_fit`: the paper's first fine-tune on demonstrations alone, indicator fixed to positive.
    `negative_weight` (RECAP): the loss weight of the ticks labelled negative (1: the paper; 0: left out)."""
    src = table.source
    outcome = np.asarray(table.outcomes, dtype=object)[table.episode_index]
    usable = table.usable
    demo, corr = src == ActionSource.DEMONSTRATION, src == ActionSource.CORRECTION
    positive = np.full(len(table), recap.INDICATOR_POSITIVE, np.int64)
    if method == Method.BC or first_fit:
        sel = usable & demo if method == Method.BC else usable
        return PolicyData(np.flatnonzero(sel), positive[sel], None)
    if method == Method.HG_DAGGER:
        sel = usable & (demo | corr)
        return PolicyData(np.flatnonzero(sel), positive[sel], None)
    if method == Method.FILTERED_BC:
        sel = usable & (demo | corr | (outcome == Outcome.SUCCESS))
        return PolicyData(np.flatnonzero(sel), positive[sel], None)
    if labels is None:
        raise ValueError(f"{method} needs advantage labels")
    known = ~np.isnan(labels.advantages)
    sel = usable & (known | corr | demo)
    idx = np.flatnonzero(sel)
    if method == Method.AWR:
        a = np.nan_to_num(labels.advantages[idx], nan=0.0)
        w = np.minimum(np.exp(a / AWR_TEMPERATURE), AWR_MAX_WEIGHT).astype(np.float32)
        return PolicyData(idx, positive[idx], w)
    pos = labels.indicators[idx]
    ind = np.where(pos, recap.INDICATOR_POSITIVE, recap.INDICATOR_NEGATIVE).astype(np.int64)
    if not 0.0 <= negative_weight <= 1.0:
        raise ValueError(f"negative_weight must lie in [0, 1], got {negative_weight}")
    if negative_weight == 1.0:
        return PolicyData(idx, ind, None)
    if leaves_negatives_out(negative_weight):
        if not pos.any():
            raise ValueError("no tick is labelled positive: with negative_weight 0 the policy has nothing to learn from")
        return PolicyData(idx[pos], ind[pos], None)
    return PolicyData(idx, ind, np.where(pos, 1.0, negative_weight).astype(np.float32))
