"""The policy contract: every registered type (training/policies/registry.py) is a `Policy` —
its typed config, its processor (raw observations -> model inputs, actions in and out of the
normalised space; its stats saved with the artifact), its model's `loss(batch)`, and
`predict_chunk(observations, indicator, beta)`. Training, the inference server and the simulated
arm all go through this class, so a policy is processed the same way wherever it runs.

Invariants: the starting noise of a chunk is drawn on the CPU from the observation's seed (the same
chunk on any device, batched or not); β is the artifact's (the value the run was evaluated with)
unless a caller overrides it; artifacts are verified before anything is loaded, nothing is unpickled;
whatever a model needs besides its weights (a language policy's tokenizer) is in its artifact, listed
in the manifest, so a policy loads from its artifact alone."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from data.stats import FeatureStats
from training import recap
from training.artifacts import ArtifactError, load_artifact, write_artifact
from training.policies import registry


@dataclass
class Observation:
    """One robot's input to a chunk. A policy that reads a history (`Policy.n_obs_steps` > 1) gets its
    last n_obs_steps control ticks, oldest first: state (n_obs_steps, state_dim), images
    (n_obs_steps, H, W, C)."""

    state: np.ndarray  # (state_dim,) float32, robot units
    images: dict[str, np.ndarray]  # name -> (H, W, C) uint8
    instruction: str
    seed: int  # the chunk's starting noise: same seed, same chunk, batched or not


ASSET_PREFIX = "asset."  # artifact files a type's model needs besides its weights (a tokenizer, a VLM config)


def _build(type_name: str, cfg, stats: Mapping[str, FeatureStats], assets: Mapping[str, bytes] | None = None):
    """(model, processor) of a type; `assets`: the model's files from its artifact."""
    if type_name == registry.NATIVE:
        from training.policies.native.modeling_native import NativeFlowPolicy
        from training.policies.native.processor_native import NativeProcessor

        return NativeFlowPolicy(cfg), NativeProcessor(stats, cfg.cameras)
    from training.policies.lerobot_adapter.modeling_adapter import LeRobotAdapter
    from training.policies.lerobot_adapter.processor_adapter import AdapterProcessor

    return LeRobotAdapter(cfg, assets), AdapterProcessor(stats, list(cfg.cameras))


class Policy:
    def __init__(self, type_name: str, cfg, stats: Mapping[str, FeatureStats], model: torch.nn.Module | None = None,
                 assets: Mapping[str, bytes] | None = None):
        self.type, self.cfg, self.stats = type_name, cfg, dict(stats)
        built, self.processor = _build(type_name, cfg, stats, assets)
        self.model = model if model is not None else built
        self.device = torch.device("cpu")

    # -- what every caller needs to know -------------------------------------------------------
    @property
    def chunk(self) -> int:
        return int(self.cfg.chunk)

    @property
    def train_horizon(self) -> int:
        """Actions per training sample (diffusion: its horizon, longer than the chunk it serves)."""
        return self.chunk if self.type == registry.NATIVE else int(self.model.train_horizon)

    @property
    def n_obs_steps(self) -> int:
        """Control ticks of observations the policy reads: this one and the n_obs_steps - 1 before it."""
        return int(getattr(self.cfg, "n_obs_steps", 1))

    @property
    def action_start(self) -> int:
        """Where a training sample's actions start relative to its tick (diffusion: its oldest observation)."""
        return 0 if self.type == registry.NATIVE else int(self.model.action_start)

    @property
    def action_dim(self) -> int:
        return int(self.cfg.action_dim)

    @property
    def state_dim(self) -> int:
        return int(self.cfg.state_dim)

    @property
    def cameras(self) -> dict[str, tuple[int, int, int]]:
        """name -> (H, W, C) uint8, as observations carry them."""
        if self.type == registry.NATIVE:
            h, w = self.cfg.image_size
            return {c: (h, w, 3) for c in self.cfg.cameras}
        return {c: (s[1], s[2], s[0]) for c, s in self.cfg.cameras.items()}

    @property
    def beta(self) -> float:
        return float(self.cfg.cfg_beta)

    @property
    def noise_shape(self) -> tuple[int, int] | None:
        return (self.chunk, self.action_dim) if self.type == registry.NATIVE else self.model.noise_shape

    def to(self, device: str | torch.device) -> "Policy":
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def eval(self) -> "Policy":
        self.model.eval()
        return self

    # -- training ------------------------------------------------------------------------------
    def training_batch(self, states: np.ndarray, images: Mapping[str, np.ndarray], instructions: Sequence[str],
                       chunks: np.ndarray, pad: np.ndarray, device: torch.device | str) -> dict:
        return (self.processor.observations(states, images, instructions, device)
                | self.processor.actions(chunks, pad, device))

    def loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.model(batch, generator)

    # -- inference -----------------------------------------------------------------------------
    def noise(self, seeds: Sequence[int]) -> torch.Tensor | None:
        shape = self.noise_shape
        if shape is None:
            return None
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

    @torch.inference_mode()
    def predict_chunk(self, observations: Sequence[Observation], indicator: int = recap.INDICATOR_POSITIVE,
                      beta: float | None = None) -> np.ndarray:
        """(B, chunk, action_dim) float32 in the robot's action units; beta None: the artifact's."""
        obs = list(observations)
        batch = self.processor.observations(np.stack([o.state for o in obs]).astype(np.float32),
                                            {c: np.stack([o.images[c] for o in obs]) for c in self.cameras},
                                            [o.instruction for o in obs], self.device)
        noise = self.noise([o.seed for o in obs])
        noise = None if noise is None else noise.to(self.device)
        x = self.model.sample(batch, indicator=indicator, beta=self.beta if beta is None else float(beta), noise=noise)
        return self.processor.unnormalize(x)

    # -- the artifact --------------------------------------------------------------------------
    def save(self, directory: str | Path, *, lineage: Mapping[str, Any] | None = None,
             metrics: Mapping[str, Any] | None = None) -> dict:
        """The weights, config, stats and the model's assets (listed in the manifest like every file)."""
        assets = self.model.assets() if hasattr(self.model, "assets") else {}
        with tempfile.TemporaryDirectory() as tmp:
            extra = {}
            for name, data in assets.items():
                (Path(tmp) / name).write_bytes(data)
                extra[ASSET_PREFIX + name] = Path(tmp) / name
            return write_artifact(directory, kind="policy", model=self.model,
                                  config=self.cfg.to_dict() | {"type": self.type}, stats=self.stats, lineage=lineage,
                                  metrics=metrics, extra_files=extra)


def build_policy(type_name: str, cfg, stats: Mapping[str, FeatureStats]) -> Policy:
    return Policy(type_name, cfg, stats)


def load_policy(directory: str | Path, device: str | torch.device = "cpu") -> tuple[Policy, dict]:
    """(policy, manifest) from a verified artifact of any registered type."""
    manifest, config, state, stats = load_artifact(directory)
    try:
        type_name, cfg = registry.config_from_artifact(config)
    except KeyError as e:
        raise ArtifactError(f"{Path(directory).name}: unknown policy type {e.args[0]!r}") from None
    if type_name == registry.NATIVE and "cfg_beta" not in config:  # artifacts from before β was part of the config
        cfg.cfg_beta = float(manifest.get("lineage", {}).get("recap", {}).get("cfg_beta", 1.0))
    d = Path(directory)
    assets = {n.removeprefix(ASSET_PREFIX): (d / n).read_bytes() for n in manifest["files"] if n.startswith(ASSET_PREFIX)}
    policy = Policy(type_name, cfg, stats, assets=assets or None)
    policy.model.load_state_dict(state)
    return policy.to(device).eval(), manifest
