"""Configuration of the distributional value function V(o_t, l), and of the chunk critic
Q(o_t, l, a_{t:t+H}) that is the same network with the action chunk as one more input (`chunk` > 0;
value-guided chunk selection, training/policies/policy.py): the native network and the VLM backbone. Torch-free, so the API checks a recipe's `value` section at the door;
a field's `metadata` holds its bounds (training/recipe.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal


@dataclass
class ValueConfig:
    state_dim: int
    cameras: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (64, 64)
    hidden: int = field(default=256, metadata={"ge": 1, "le": 65_536})
    num_bins: int = 201
    # regularises V: a memorised value labels noise (see shared/notes)
    dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1})
    # training
    lr: float = field(default=3e-4, metadata={"gt": 0, "le": 1})
    weight_decay: float = field(default=1e-4, metadata={"ge": 0, "le": 1})
    batch_size: int = field(default=256, metadata={"ge": 1, "le": 65_536})
    steps: int = field(default=2000, metadata={"ge": 1, "le": 10_000_000})
    # >1 averages independently initialised members' values
    ensemble: int = field(default=4, metadata={"ge": 1, "le": 64})
    # cross-fitting folds K (0: K = ensemble): member m holds out fold m % K of split m // K (each split
    # its own stratified shuffle), so an episode is out of fold for ensemble // K members, and its
    # labels come from the mean of those members. 4 members over 2 folds: 2 out-of-fold members each.
    folds: int = field(default=2, metadata={"ge": 0, "le": 64})
    # the elapsed fraction of the task's time limit (tick / L) as an input: in state-only data a stuck
    # arm looks the same at tick 20 and at tick 190, but its return does not (DESIGN §5)
    time_input: bool = True
    # With an ensemble, member k never sees the episodes of fold k, and the labels of the run's own
    # episodes come from the members that did not train on them (cross-fitting): a V that has seen an
    # episode predicts its realised return, and the advantage of every step collapses to noise.
    cross_fit: bool = True
    seed: int = 0
    backbone: Literal["native", "vlm"] = "native"  # "native" (CPU, minutes) or "vlm" (vision tower + LM, GPUs)
    vlm: dict = field(default_factory=dict)  # VLMValueConfig overrides for backbone="vlm"
    # the chunk critic: Q reads the chunk of `chunk` x `action_dim` actions (normalised) executed from the
    # tick; 0 = V (no action input). Its target is V's: the normalised return from the tick.
    chunk: int = 0
    action_dim: int = 0
    # share of training samples whose elapsed time is hidden (the time offset left out), so the critic
    # also scores a chunk when a request does not say the tick (a robot that sends no `tick`)
    time_dropout: float = 0.0

    # set from the data and the run (num_bins: the recipe's recap.num_bins), never from a recipe's value section
    DERIVED = ("state_dim", "cameras", "image_size", "num_bins", "seed", "chunk", "action_dim", "time_dropout")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ValueConfig":
        d = dict(d)
        d["image_size"] = tuple(d.get("image_size", (64, 64)))
        d.setdefault("time_input", False)  # artifacts written before V read the time
        d.setdefault("folds", 0)  # ... and before the folds were their own setting
        return cls(**d)

    @property
    def num_folds(self) -> int:
        """The cross-fitting folds in effect: 0 (none) without cross-fitting or with one member."""
        if not self.cross_fit or self.ensemble < 2:
            return 0
        k = self.folds or self.ensemble
        return min(k, self.ensemble) if k >= 2 else 0
