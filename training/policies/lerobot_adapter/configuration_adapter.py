"""Any LeRobot policy as the backbone of an advantage-conditioned policy.

Torch-free: the API validates recipes against these fields (and the LeRobot fields recorded in
lerobot_fields.json) without importing LeRobot or torch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path

# Policies that read the task text: the indicator goes into the prompt ("Advantage: positive").
LANGUAGE_POLICIES = {"pi0", "pi05", "smolvla", "pi0_fast", "xvla"}
# The tokenizer LeRobot's own preprocessor uses for each (SmolVLA: its `vlm_model_name`).
DEFAULT_TOKENIZERS = {"pi0": "google/paligemma-3b-pt-224", "pi05": "google/paligemma-3b-pt-224",
                      "pi0_fast": "google/paligemma-3b-pt-224"}
# The LeRobot backbones registered as policy types ("lerobot:<name>").
BACKBONES = ("act", "diffusion", "smolvla", "pi0", "pi05")
FIELDS_FILE = Path(__file__).with_name("lerobot_fields.json")
# LeRobot config fields the adapter sets itself (features, device, hub publishing, processors' normalisation)
NOT_SETTABLE = {"input_features", "output_features", "device", "use_amp", "use_peft", "push_to_hub", "repo_id",
                "private", "tags", "license", "pretrained_path", "pretrained_revision", "normalization_mapping",
                "n_obs_steps"}  # the adapter's own field (below): it sizes the processing and the wire too
# Policies that read a history of observations (n_obs_steps > 1); the others read the current one.
HISTORY_POLICIES = {"diffusion"}


@dataclass
class LeRobotAdapterConfig:
    policy_type: str  # a LeRobot policy name: act, diffusion, smolvla, pi05, ...
    state_dim: int
    action_dim: int
    cameras: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # name -> (C, H, W)
    policy_kwargs: dict = field(default_factory=dict)  # fields of the LeRobot config (chunk_size, dims...)
    pretrained_path: str | None = None  # a local checkpoint (or hub id, for users with a hub)
    lora_rank: int = field(default=0, metadata={"ge": 0, "le": 4096})  # > 0: freeze the backbone and train LoRA adapters (peft)
    lora_alpha: int = field(default=16, metadata={"ge": 1, "le": 65_536})
    lora_targets: list[str] = field(default_factory=list)  # module-name suffixes; default: all nn.Linear
    indicator_dropout: float = 0.3
    tokenizer: str | None = None  # language policies: a tokenizer folder or hub id (default: LeRobot's)
    cfg_beta: float = 1.0  # guidance at inference: the value the run was evaluated with (1 = no guidance)
    # observations the policy reads: this tick's and the n_obs_steps - 1 before it (diffusion only)
    n_obs_steps: int = field(default=1, metadata={"ge": 1, "le": 16})
    # training
    lr: float = field(default=1e-4, metadata={"gt": 0, "le": 1})  # metadata: the bounds a recipe is checked against
    weight_decay: float = field(default=1e-4, metadata={"ge": 0, "le": 1})
    batch_size: int = field(default=32, metadata={"ge": 1, "le": 65_536})
    steps: int = field(default=2000, metadata={"ge": 1, "le": 10_000_000})
    seed: int = 0

    DERIVED = ("policy_type", "state_dim", "action_dim", "cameras", "indicator_dropout", "cfg_beta", "seed",
               "policy_kwargs")

    def __post_init__(self):
        if self.n_obs_steps > 1 and self.policy_type not in HISTORY_POLICIES:
            raise ValueError(f"n_obs_steps: {self.policy_type} reads only the current observation")

    @property
    def indicator_as_text(self) -> bool:
        return self.policy_type in LANGUAGE_POLICIES

    @property
    def chunk(self) -> int:
        """Actions per predicted chunk (LeRobot's chunk_size; diffusion: n_action_steps)."""
        kw = self.policy_kwargs
        if self.policy_type == "diffusion":
            return int(kw.get("n_action_steps", lerobot_defaults("diffusion").get("n_action_steps", 8)))
        return int(kw.get("chunk_size", lerobot_defaults(self.policy_type).get("chunk_size", 50)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LeRobotAdapterConfig":
        d = dict(d)
        d["cameras"] = {k: tuple(v) for k, v in d.get("cameras", {}).items()}
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})


@cache
def lerobot_fields() -> dict[str, dict[str, dict]]:
    """Per backbone: settable LeRobot config field -> {"kind": int|float|bool|str|list, "nullable", "default"}."""
    return json.loads(FIELDS_FILE.read_text())


def lerobot_defaults(policy_type: str) -> dict:
    return {k: v["default"] for k, v in lerobot_fields().get(policy_type, {}).items()}


def record_lerobot_fields() -> dict[str, dict[str, dict]]:
    """The settable scalar fields of each backbone's LeRobot config, read from the installed LeRobot
    (written to lerobot_fields.json; a test keeps the file in step with the library)."""
    import dataclasses
    import typing

    from lerobot.policies.factory import make_policy_config

    kinds = {int: "int", float: "float", bool: "bool", str: "str", list: "list", tuple: "list"}
    out: dict[str, dict[str, dict]] = {}
    for name in BACKBONES:
        cfg = make_policy_config(name, device="cpu")
        hints = typing.get_type_hints(type(cfg))
        table = {}
        for f in dataclasses.fields(cfg):
            if f.name in NOT_SETTABLE or not f.init:
                continue
            hint = hints[f.name]
            args = typing.get_args(hint)
            nullable = type(None) in args
            base = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) in (
                typing.Union, __import__("types").UnionType) else hint
            kind = kinds.get(typing.get_origin(base) or base)
            value = getattr(cfg, f.name)
            if kind is None or (kind == "list" and not all(isinstance(x, (int, float, str, bool)) for x in value or ())):
                continue
            if kind == "list" and value is not None:
                value = list(value)
            table[f.name] = {"kind": kind, "nullable": nullable, "default": value}
        out[name] = table
    return out


if __name__ == "__main__":  # python -m training.policies.lerobot_adapter.configuration_adapter
    FIELDS_FILE.write_text(json.dumps(record_lerobot_fields(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIELDS_FILE}")
