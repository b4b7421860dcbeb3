"""A LeRobot policy (with its pre/post-processors) as one of our verified artifacts, so the
registry, deployments and the inference server treat it like a native policy. LeRobot's own files
(config, processor configs and stats) travel inside under a `lerobot.` prefix; the weights are the
artifact's model.safetensors. Loading rebuilds LeRobot's pretrained folder from them, after the
sha256 check; nothing is unpickled."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

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
