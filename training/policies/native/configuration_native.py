"""Configuration of the native advantage-conditioned flow-matching action-chunk policy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class NativePolicyConfig:
    state_dim: int
    action_dim: int
    chunk: int = 16  # H: actions per predicted chunk
    cameras: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (64, 64)
    hidden: int = 256
    flow_steps: int = 10  # Euler steps from noise to actions at inference
    indicator_dropout: float = 0.3
    cfg_beta: float = 1.0  # guidance at inference: the value the run was evaluated with (1 = no guidance)
    # training
    lr: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 256
    steps: int = 3000
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
