"""Any LeRobot policy as the backbone of an advantage-conditioned policy."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# Policies that read the task text: the indicator goes into the prompt ("Advantage: positive").
LANGUAGE_POLICIES = {"pi0", "pi05", "smolvla", "pi0_fast", "xvla"}
# The tokenizer LeRobot's own preprocessor uses for each (SmolVLA: its `vlm_model_name`).
DEFAULT_TOKENIZERS = {"pi0": "google/paligemma-3b-pt-224", "pi05": "google/paligemma-3b-pt-224",
                      "pi0_fast": "google/paligemma-3b-pt-224"}


@dataclass
class LeRobotAdapterConfig:
    policy_type: str  # a LeRobot policy name: act, diffusion, smolvla, pi05, ...
    state_dim: int
    action_dim: int
    cameras: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (C, H, W)
    policy_kwargs: dict = field(default_factory=dict)  # fields of the LeRobot config (chunk_size, dims...)
    pretrained_path: str | None = None  # a local checkpoint (or hub id, for users with a hub)
    lora_rank: int = 0  # > 0: freeze the backbone and train LoRA adapters (peft)
    lora_alpha: int = 16
    lora_targets: list[str] = field(default_factory=list)  # module-name suffixes; default: all nn.Linear
    indicator_dropout: float = 0.3
    tokenizer: str | None = None  # language policies: a tokenizer folder or hub id (default: LeRobot's)

    @property
    def indicator_as_text(self) -> bool:
        return self.policy_type in LANGUAGE_POLICIES

    def to_dict(self) -> dict:
        return asdict(self)
