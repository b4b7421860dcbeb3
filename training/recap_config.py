"""RECAP's hyper-parameters (torch-free, so the API checks a recipe's `recap` section at the door).

Every default is the design's (DESIGN.md §5). A field's `metadata` holds its bounds (Pydantic's
ge / gt / le / lt); training/recipe.py turns them into the recipe check, so a value out of range
is refused when the run is requested, never met in the worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

BETA_MAX = 10.0  # guidance beyond this only amplifies the noise between the two passes
SELECT_MAX = 64  # candidate chunks per observation: one batch of K x robots through the policy
PositiveCap = Literal["none", "success_share", "success_rate"]  # recap.positive_fraction_cap


@dataclass(frozen=True)
class RecapConfig:
    num_bins: int = field(default=201, metadata={"ge": 2, "le": 10_001})  # value distribution over [-1, 0]
    # failure cost; None -> L_task (the task's maximum episode length)
    c_fail: float | None = field(default=None, metadata={"gt": 0, "le": 1e9})
    advantage_horizon: int = field(default=50, metadata={"ge": 1, "le": 1_000_000})  # N control steps
    # target share of positive indicators, first advantage-labelled fit / later rounds
    positive_fraction_first: float = field(default=0.3, metadata={"gt": 0, "lt": 1})
    positive_fraction_later: float = field(default=0.4, metadata={"gt": 0, "lt": 1})
    # a cap on that share per task, where the policy rarely succeeds (a fixed 40 % would then label mostly failing
    # behaviour positive): "success_share", at most the share of the task's policy ticks that lie in successful
    # episodes; "success_rate", at most the success rate of the task's episodes the policy ran. A cap applies
    # only when some such episode succeeded. "none" = the paper's fixed share
    positive_fraction_cap: PositiveCap = "none"
    indicator_dropout: float = field(default=0.3, metadata={"ge": 0, "lt": 1})  # share of samples trained unconditionally
    # loss weight of the ticks labelled negative in the conditioned policy's fit. 1 = the paper (every tick
    # counts the same); below 1 the positive behaviour gets more of the policy's fit; 0 = the negative ticks
    # are left out and the policy learns from its positives alone (guidance then has nothing to push from).
    # The loss is the weighted mean over a batch, so the weight is relative to the batch's positives
    negative_weight: float = field(default=1.0, metadata={"ge": 0, "le": 1})
    # 1 = condition on "positive"; > 1 = classifier-free guidance; what the run is evaluated with, kept in
    # the artifact (a deployment may override it, services/registry.py)
    cfg_beta: float = field(default=1.0, metadata={"ge": 0, "le": BETA_MAX})

    # guard-rail: the value function's held-out (out-of-fold) Spearman correlation with the realised
    # returns must reach this before its advantages label anything; below it the run stops
    # ("stop") or trains success-filtered BC instead and says so in its lineage ("filtered_bc").
    # -1 (the library default) lets every V through: a recipe for real data sets its bar (the
    # benchmark: 0.2); tiny smoke runs with a few value steps would not pass one
    min_value_corr: float = field(default=-1.0, metadata={"ge": -1, "le": 1})
    on_weak_value: Literal["stop", "filtered_bc"] = "stop"
    # training budgets that follow the data, the same rule for every method: steps =
    # max(section steps, ceil(epochs x ticks / batch size)), ticks = the selection's usable ticks
    # (value: ticks of known outcome); 0 = the section's fixed steps
    policy_epochs: float = field(default=0.0, metadata={"ge": 0, "le": 10_000})
    value_epochs: float = field(default=0.0, metadata={"ge": 0, "le": 10_000})
    # value-guided chunk selection (V-GPS style; native_flow policies): K > 1 trains a chunk critic
    # Q(o, l, t, chunk) beside the policy (the value section's network and budget, V's targets), saved in
    # the policy's artifact; at inference K chunks are sampled and the one Q scores highest is executed.
    # 0 or 1 = off. Costs about K times the sampling compute per chunk (one batch).
    select_chunks: int = field(default=0, metadata={"ge": 0, "le": SELECT_MAX})

    DERIVED = ()  # every field is the recipe's to set
