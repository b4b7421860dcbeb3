"""The policy contract: every registered type (training/policies/registry.py) is a `Policy` —
its typed config, its processor (raw observations -> model inputs, actions in and out of the
normalised space; its stats saved with the artifact), its model's `loss(batch)`, and
`predict_chunk(observations, indicator, beta, select)`. Training, the inference server and the
simulated arm all go through this class, so a policy is processed the same way wherever it runs.

Value-guided chunk selection (V-GPS style): an artifact may carry a chunk critic (`ChunkCritic`: the
value function's network reading the action chunk too, `critic.safetensors` + `critic.json`, trained
by the run when `recap.select_chunks` K > 1); `predict_chunk` then samples K chunks per observation
from K noise seeds derived from its seed (the first is the seed itself), as one batch, and returns the
one the critic scores highest. Off (plain sampling) without a critic or with K <= 1.

Invariants: the starting noise of a chunk is drawn on the CPU from the observation's seed (the same
chunk on any device, batched or not); β is the artifact's (the value the run was evaluated with)
unless a caller overrides it; artifacts are verified before anything is loaded, nothing is unpickled;
whatever a model needs besides its weights (a language policy's tokenizer) is in its artifact, listed
in the manifest, so a policy loads from its artifact alone; selection is deterministic in the seed."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
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
    tick: int | None = None  # the control tick within the episode (the chunk critic's time input); None: unknown


def candidate_seeds(seed: int, k: int) -> list[int]:
    """The K noise seeds of value-guided selection: the observation's own seed first (K = 1 is plain
    sampling), then seeds derived from it (deterministic, spread by numpy's SeedSequence)."""
    return [int(seed)] + [int(np.random.SeedSequence([int(seed), j]).generate_state(1)[0]) & 0x7FFF_FFFF
                          for j in range(1, k)]


CRITIC_WEIGHTS, CRITIC_CONFIG = "critic.safetensors", "critic.json"


class ChunkCritic:
    """Q(o, l, t, chunk): a chunk critic (training.value's network with `ValueConfig.chunk` > 0) with what
    scoring needs: the normalisation of states and actions (the policy's), the tasks' time limits by
    instruction (elapsed = tick / limit) and `select`, the K the run was trained for."""

    def __init__(self, model: torch.nn.Module, stats: Mapping[str, FeatureStats], select: int,
                 time_limits: Mapping[str, int]):
        from training.policies.native.processor_native import NativeProcessor

        self.model, self.select, self.time_limits = model, int(select), dict(time_limits)
        self.cfg = model.cfg
        self.stats = {k: stats[k] for k in ("observation.state", "action")}
        self.processor = NativeProcessor({"observation.state": self.stats["observation.state"]}, self.cfg.cameras)
        self.default_limit = max(self.time_limits.values(), default=1)

    def elapsed(self, obs: Observation) -> float:
        if obs.tick is None:
            return float("nan")  # the critic was trained to score without the time too (time_dropout)
        return float(np.clip(obs.tick / max(1, self.time_limits.get(obs.instruction, self.default_limit)), 0.0, 1.0))

    @torch.no_grad()
    def score(self, observations: Sequence[Observation], chunks: np.ndarray, device: torch.device) -> torch.Tensor:
        """(B,) expected normalised return of executing chunks[i] (robot units) from observations[i]."""
        obs = list(observations)
        batch = self.processor.observations(np.stack([o.state for o in obs]).astype(np.float32),
                                            {c: np.stack([o.images[c] for o in obs]) for c in self.cfg.cameras},
                                            [o.instruction for o in obs], device)
        if self.cfg.time_input:
            batch["elapsed"] = torch.tensor([self.elapsed(o) for o in obs], dtype=torch.float32, device=device)
        batch["chunk"] = torch.from_numpy(self.stats["action"].normalize(chunks)).float().to(device)
        return self.model.value(batch)

    def files(self, tmp: Path) -> dict[str, Path]:
        """The critic's artifact files (weights as safetensors, config as JSON), written into `tmp`."""
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
                  str(tmp / CRITIC_WEIGHTS))
        (tmp / CRITIC_CONFIG).write_text(json.dumps({"value": self.cfg.to_dict(), "select_chunks": self.select,
                                                     "time_limits": self.time_limits}, indent=1))
        return {CRITIC_WEIGHTS: tmp / CRITIC_WEIGHTS, CRITIC_CONFIG: tmp / CRITIC_CONFIG}

    @classmethod
    def load(cls, directory: Path, stats: Mapping[str, FeatureStats]) -> "ChunkCritic":
        """From an artifact already verified (its files' sha256 checked against the manifest)."""
        from safetensors.torch import load_file

        from training.value import ValueConfig, build_value_function

        from training.recap_config import SELECT_MAX

        meta = json.loads((directory / CRITIC_CONFIG).read_text())
        k = meta.get("select_chunks")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= SELECT_MAX:
            raise ArtifactError(f"{directory.name}: {CRITIC_CONFIG}: select_chunks {str(k)[:16]!r} is not in 0..{SELECT_MAX}")
        model = build_value_function(ValueConfig.from_dict(meta["value"]))
        model.load_state_dict(load_file(str(directory / CRITIC_WEIGHTS)))
        return cls(model.eval(), stats, meta["select_chunks"], meta.get("time_limits", {}))


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
        self.critic: ChunkCritic | None = None  # value-guided chunk selection, when the run trained one

    @property
    def select_chunks(self) -> int:
        """K of value-guided selection by default (the run's recap.select_chunks); 0 without a critic."""
        return self.critic.select if self.critic is not None else 0

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
        if self.critic is not None:
            self.critic.model.to(self.device)
        return self

    def eval(self) -> "Policy":
        self.model.eval()
        if self.critic is not None:
            self.critic.model.eval()
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
                      beta: float | None = None, select: int | None = None) -> np.ndarray:
        """(B, chunk, action_dim) float32 in the robot's action units; beta None: the artifact's.
        `select`: K of value-guided selection (None: the artifact's; <= 1 or no critic: plain sampling):
        K chunks per observation from `candidate_seeds`, sampled as one batch, the critic's best kept."""
        obs = list(observations)
        k = self.select_chunks if select is None else int(select)
        if k <= 1 or self.critic is None or not obs:
            return self._sample(obs, indicator, beta)
        cands = [replace(o, seed=s) for o in obs for s in candidate_seeds(o.seed, k)]
        chunks = self._sample(cands, indicator, beta)  # (B K, chunk, A)
        scores = self.critic.score(cands, chunks, self.device).reshape(len(obs), k)
        best = scores.argmax(1).cpu().numpy()
        return chunks.reshape(len(obs), k, *chunks.shape[1:])[np.arange(len(obs)), best]

    def _sample(self, obs: list[Observation], indicator: int, beta: float | None) -> np.ndarray:
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
            if self.critic is not None:
                extra.update(self.critic.files(Path(tmp)))
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
    if CRITIC_CONFIG in manifest["files"]:
        policy.critic = ChunkCritic.load(d, stats)
    return policy.to(device).eval(), manifest
