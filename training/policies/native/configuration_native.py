"""Configuration of the native advantage-conditioned flow-matching action-chunk policy (a field's
`metadata`: the bounds a recipe is checked against, training/policies/registry.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class NativePolicyConfig:
    state_dim: int
    action_dim: int
    chunk: int = field(default=16, metadata={"ge": 1, "le": 1024})  # H: actions per predicted chunk
    cameras: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (64, 64)
    hidden: int = field(default=256, metadata={"ge": 1, "le": 65_536})
    flow_steps: int = field(default=10, metadata={"ge": 1, "le": 1000})  # Euler steps from noise to actions at inference
    indicator_dropout: float = 0.3
    cfg_beta: float = 1.0  # guidance at inference: the value the run was evaluated with (1 = no guidance)
    # training
    lr: float = field(default=3e-4, metadata={"gt": 0, "le": 1})
    weight_decay: float = field(default=1e-4, metadata={"ge": 0, "le": 1})
    batch_size: int = field(default=256, metadata={"ge": 1, "le": 65_536})
    steps: int = field(default=3000, metadata={"ge": 1, "le": 10_000_000})
    seed: int = 0

    # set from the data and the run, never from a recipe
    DERIVED = ("state_dim", "action_dim", "cameras", "image_size", "indicator_dropout", "cfg_beta", "seed")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NativePolicyConfig":
        d = dict(d)
        d["image_size"] = tuple(d.get("image_size", (64, 64)))
        return cls(**d)
