"""A LeRobot policy (with its pre/post-processors) as one of our verified artifacts, so the
registry, deployments and the inference server treat it like a native policy. LeRobot's own files
(config, processor configs and stats) travel inside under a `lerobot.` prefix; the weights are the
artifact's model.safetensors. Loading rebuilds LeRobot's pretrained folder from them, after the
sha256 check; nothing is unpickled."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from training.artifacts import load_artifact, write_artifact

PREFIX = "lerobot."


def write_lerobot_artifact(directory: str | Path, policy, preprocessor, postprocessor, *, instruction: str = "",
                           lineage: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None) -> dict:
    cfg = policy.config
    state_dim = cfg.input_features["observation.state"].shape[0]
    cameras = {k.removeprefix("observation.images."): list(v.shape) for k, v in cfg.input_features.items()
               if k.startswith("observation.images.")}
    with tempfile.TemporaryDirectory() as tmp:
        policy.save_pretrained(tmp)
        preprocessor.save_pretrained(tmp)
        postprocessor.save_pretrained(tmp)
        extra = {PREFIX + p.name: p for p in Path(tmp).iterdir() if p.name != "model.safetensors"}
        return write_artifact(directory, kind="policy", model=policy,
                              config={"type": f"lerobot_{cfg.type}", "policy_type": cfg.type, "state_dim": state_dim,
                                      "action_dim": cfg.output_features["action"].shape[0], "chunk": cfg.chunk_size,
                                      "cameras": cameras, "instruction": instruction},
                              stats={},  # normalisation is LeRobot's processors' (their stats are in the files)
                              lineage=lineage, metrics=metrics, extra_files=extra)


def load_lerobot_artifact(directory: str | Path, device: str = "cpu"):
    """(policy, preprocessor, postprocessor, our config) from a verified artifact."""
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from safetensors.torch import save_file

    d = Path(directory)
    manifest, config, state, _ = load_artifact(d)  # raises ArtifactError naming a bad file
    with tempfile.TemporaryDirectory() as tmp:
        for name in manifest["files"]:
            if name.startswith(PREFIX):
                (Path(tmp) / name.removeprefix(PREFIX)).write_bytes((d / name).read_bytes())
        save_file(state, str(Path(tmp) / "model.safetensors"))
        policy = get_policy_class(config["policy_type"]).from_pretrained(tmp)
        policy.to(device).eval()
        pre, post = make_pre_post_processors(policy.config, pretrained_path=tmp,
                                             preprocessor_overrides={"device_processor": {"device": device}},
                                             postprocessor_overrides={"device_processor": {"device": device}})
    return policy, pre, post, config


def is_exported(directory: str | Path) -> bool:
    """An artifact written by write_lerobot_artifact (config type "lerobot_<name>", LeRobot's processors)."""
    try:
        return str(json.loads((Path(directory) / "config.json").read_text()).get("type", "")).startswith("lerobot_")
    except (OSError, ValueError):
        return False  # the verified load that follows names what is wrong


def _processor_stats(pipeline, feature: str) -> dict | None:
    """A feature's statistics as LeRobot's (un)normaliser step saved them (mean, std, min, max, ...)."""
    for step in getattr(pipeline, "steps", []):
        stats = getattr(step, "stats", None)
        if isinstance(stats, dict) and feature in stats:
            return dict(stats[feature])
    return None


def _noise_shape(cfg) -> tuple[int, int] | None:
    """The per-sample starting noise a sampling policy draws: flow-matching VLAs (SmolVLA, pi0,
    pi05) over their padded action width, diffusion over its horizon; None for a deterministic one."""
    if hasattr(cfg, "max_action_dim") and hasattr(cfg, "num_steps"):
        return cfg.chunk_size, cfg.max_action_dim
    if cfg.type == "diffusion":
        return cfg.horizon, cfg.action_feature.shape[0]
    return None


class ExportedLeRobotPolicy:
    """A LeRobot policy trained elsewhere, with LeRobot's own processors as its processing. It knows
    no advantage indicator: it is served as trained (β = 1, the indicator ignored).

    Batching never changes an answer: a sampling policy's starting noise is drawn per request from its
    own seed, and language policies see right-padded prompts whose pads LeRobot masks out of attention
    and position ids (tests/services/test_language_batching.py)."""

    beta = 1.0

    def __init__(self, policy, pre, post, config: dict):
        self.policy, self.pre, self.post, self.cfg = policy, pre, post, config
        self.state_dim, self.action_dim, self.chunk = config["state_dim"], config["action_dim"], config["chunk"]
        self.cameras = {c: (s[1], s[2], s[0]) for c, s in config["cameras"].items()}  # (C, H, W) -> wire (H, W, C)
        self._noise_shape = _noise_shape(policy.config)
        # LeRobot's diffusion reads its last n_obs_steps ticks (its default is 2): requests carry them
        self.n_obs_steps = int(policy.config.n_obs_steps) if policy.config.type == "diffusion" else 1

    def envelope_stats(self) -> dict:
        return {"observation.state": _processor_stats(self.pre, "observation.state"),
                "action": _processor_stats(self.post, "action")}

    @torch.inference_mode()
    def predict_chunk(self, obs: Sequence, indicator: int | None = None, beta: float | None = None) -> np.ndarray:
        batch = {"observation.state": torch.from_numpy(np.stack([o.state for o in obs])),
                 "task": [o.instruction for o in obs]}
        for c in self.cameras:
            frames = torch.from_numpy(np.stack([o.images[c] for o in obs]))  # (B, [n_obs_steps,] H, W, C)
            batch[f"observation.images.{c}"] = frames.movedim(-1, -3).float().div(255)
        kwargs = {}
        if self._noise_shape is not None:  # drawn on the CPU from each request's seed: alone or batched, the same
            kwargs["noise"] = torch.stack([torch.randn(self._noise_shape, generator=torch.Generator().manual_seed(o.seed))
                                           for o in obs]).to(next(self.policy.parameters()).device)
        chunk = self.policy.predict_action_chunk(self.pre(batch), **kwargs)  # (B, H, A), normalised
        B, H, A = chunk.shape
        out = self.post(chunk.reshape(B * H, A)).reshape(B, H, A)
        return out.float().cpu().numpy()


def load_exported_policy(directory: str | Path, device: str = "cpu") -> tuple[ExportedLeRobotPolicy, dict]:
    policy, pre, post, config = load_lerobot_artifact(directory, device)
    return ExportedLeRobotPolicy(policy, pre, post, config), load_artifact_manifest(directory)


def load_artifact_manifest(directory: str | Path) -> dict:
    return json.loads((Path(directory) / "manifest.json").read_text())
