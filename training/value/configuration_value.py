"""Configuration of the native distributional value function V(o_t, l) (no action input)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class ValueConfig:
    state_dim: int
    cameras: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (64, 64)
    hidden: int = 256
    num_bins: int = 201
    dropout: float = 0.1  # regularises V: a memorised value labels noise (see shared/notes)
    # training
    lr: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 256
    steps: int = 2000
    ensemble: int = 1  # >1 averages independently initialised members' values
    # With an ensemble, member k never sees the episodes of fold k, and the labels of the run's own
    # episodes come from the members that did not train on them (cross-fitting): a V that has seen an
    # episode predicts its realised return, and the advantage of every step collapses to noise.
    cross_fit: bool = True
    seed: int = 0
    backbone: str = "native"  # "native" (CPU, minutes) or "vlm" (vision tower + language model, GPUs)
    vlm: dict = field(default_factory=dict)  # VLMValueConfig overrides for backbone="vlm"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ValueConfig":
        d = dict(d)
        d["image_size"] = tuple(d.get("image_size", (64, 64)))
        return cls(**d)
