"""One definition of a RECAP round on simulated arms, shared by the demo (services/demo: robots
through the real stack) and the benchmark (training/sim/loop.py SimLoop: in-process):

- the layouts (the arm's initial conditions) per role: demonstrations, collection per round,
  canary per round, evaluation (one fixed set per group, reused every round so rounds compare
  paired). A group is a robot in the demo, a task in the benchmark;
- `RoundPlan`: the fields both configs share (rounds, episode time limit, operator mix, correction
  budget, the value and policy sections of the training recipe);
- the recipe presets per policy kind (`native`, `act`, `smolvla-tiny`) and size (`full`, `quick`).
  A preset sets sizes only: every other hyper-parameter is the registered type's default
  (training/policies/registry.py), printed at the start of each run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# Layout bases per role; a layout is base + 1000 * group + k (collection adds 100_000 * round).
# Validation layouts are for choosing settings (learning rates, N, beta, operator settings); the
# evaluation layouts only ever measure.
DEMO_SEED, COLLECT_SEED, CANARY_SEED, EVAL_SEED, VALIDATION_SEED = 100_000, 200_000, 50_000, 0, 900_000


def demo_layout(group: int, k: int) -> int:
    return DEMO_SEED + 1000 * group + k


def collect_layout(round_: int, group: int, k: int) -> int:
    return COLLECT_SEED + 100_000 * round_ + 1000 * group + k


def canary_layout(round_: int, k: int) -> int:
    return CANARY_SEED + 1000 * round_ + k


def eval_layout(group: int, k: int) -> int:
    return EVAL_SEED + 1000 * group + k


def validation_layout(group: int, k: int) -> int:
    return VALIDATION_SEED + 1000 * group + k


# Policy kinds a round can train: kind -> the registered policy type.
POLICY_KINDS = {"native": "native_flow", "act": "lerobot:act", "smolvla-tiny": "lerobot:smolvla"}
IMAGE_KINDS = {"act", "smolvla-tiny"}  # kinds that read the camera
DEFAULT_CAMERA = (96, 128)  # H, W of the rendered camera for image policies

# Sizes per kind and preset size; anything not here is the type's registered default.
_POLICY_SIZES = {
    "native": {"full": {"steps": 2500, "hidden": 256, "chunk": 8},
               "quick": {"steps": 400, "hidden": 64, "chunk": 8}},
    # ACT with a small transformer (ResNet-18 stays the vision backbone, from random weights: no hub)
    "act": {"full": {"steps": 300, "batch_size": 16, "chunk_size": 8, "dim_model": 128, "n_heads": 4,
                     "dim_feedforward": 256, "n_encoder_layers": 2, "n_decoder_layers": 1, "use_vae": False},
            "quick": {"steps": 150, "batch_size": 16, "chunk_size": 8, "dim_model": 64, "n_heads": 2,
                      "dim_feedforward": 128, "n_encoder_layers": 1, "n_decoder_layers": 1, "use_vae": False}},
    # SmolVLA on a tiny SmolVLM built locally (lerobot_adapter.tiny: vlm_model_name and tokenizer)
    "smolvla-tiny": {"full": {"steps": 400, "batch_size": 16, "chunk_size": 8, "num_steps": 4,
                              "resize_imgs_with_padding": [32, 32], "tokenizer_max_length": 16, "num_vlm_layers": 2,
                              "num_expert_layers": 1, "max_state_dim": 40, "max_action_dim": 8,
                              "load_vlm_weights": False},
                     "quick": {"steps": 150, "batch_size": 16, "chunk_size": 8, "num_steps": 2,
                               "resize_imgs_with_padding": [32, 32], "tokenizer_max_length": 16, "num_vlm_layers": 2,
                               "num_expert_layers": 1, "max_state_dim": 40, "max_action_dim": 8,
                               "load_vlm_weights": False}},
}
_VALUE_SIZES = {"full": {"steps": 1000, "hidden": 128, "ensemble": 2},
                "quick": {"steps": 150, "hidden": 64, "ensemble": 2}}
# the value function reads the camera too: fewer steps and smaller batches (a batch of 256 frames of
# 96x128 through two ensemble members took 20x the time of 32 on a CPU)
_IMAGE_VALUE = {"full": {"steps": 400, "batch_size": 32}, "quick": {"steps": 100, "batch_size": 32}}


def policy_preset(kind: str = "native", size: str = "full", *, vlm_dir: str | Path | None = None) -> dict:
    """The recipe's policy section for `kind` at `size`; `vlm_dir`: the local SmolVLM folder a
    smolvla-tiny policy loads its config, tokenizer and processor from."""
    if kind not in POLICY_KINDS:
        raise ValueError(f"unknown policy kind {kind!r} (one of {', '.join(POLICY_KINDS)})")
    section = {"type": POLICY_KINDS[kind], **_POLICY_SIZES[kind][size]}
    if kind == "smolvla-tiny":
        if vlm_dir is None:
            raise ValueError("smolvla-tiny needs the folder of its tiny SmolVLM (training.policies.lerobot_adapter.tiny)")
        section |= {"vlm_model_name": str(vlm_dir), "tokenizer": str(vlm_dir)}
    return section


def value_preset(size: str = "full", kind: str = "native") -> dict:
    """The recipe's value section for a round training a `kind` policy (image kinds: on the camera too)."""
    return _VALUE_SIZES[size] | (_IMAGE_VALUE[size] if kind in IMAGE_KINDS else {})


@dataclass
class RoundPlan:
    """What a round is, for the demo and the benchmark alike (episode counts per group are each
    config's own: robots in the demo, tasks in the benchmark)."""
    rounds: int = 3
    max_steps: int = 200  # episode time limit (ticks); also L for the returns
    demo_mix: dict[str, float] = field(default_factory=lambda: {"clean": 0.2, "slow": 0.4, "sloppy": 0.4})
    correction_budget: int = 600  # correction ticks per group per round
    value: dict = field(default_factory=value_preset)  # the recipe's value section
    policy: dict = field(default_factory=policy_preset)  # the recipe's policy section

    def task_max_len(self, tasks: list[str]) -> dict[str, int]:
        return {t: self.max_steps for t in tasks}
