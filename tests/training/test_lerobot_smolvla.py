"""SmolVLA (a language-conditioned LeRobot policy) through the adapter, from a tiny SmolVLM built
locally: the advantage indicator reaches the model as prompt text, tokenized as LeRobot does."""

from pathlib import Path

import pytest
import torch

from training.policies.lerobot_adapter.tiny import tiny_smolvlm  # noqa: F401 (the other tests import it from here)


def _config(vlm: Path):
    from training.policies.lerobot_adapter import LeRobotAdapterConfig

    return LeRobotAdapterConfig(
        policy_type="smolvla", state_dim=5, action_dim=3, cameras={"front": (3, 32, 32)},
        policy_kwargs=dict(vlm_model_name=str(vlm), load_vlm_weights=False, chunk_size=6, n_action_steps=6,
                           num_steps=2, resize_imgs_with_padding=(32, 32), tokenizer_max_length=16, num_vlm_layers=2,
                           num_expert_layers=1, max_state_dim=8, max_action_dim=8))


def _adapter(vlm: Path):
    from training.policies.lerobot_adapter import LeRobotAdapter

    return LeRobotAdapter(_config(vlm))


def _batch(indicator):
    g = torch.Generator().manual_seed(0)
    return {"observation.state": torch.randn(4, 5, generator=g), "observation.images.front": torch.rand(4, 3, 32, 32, generator=g),
            "action": torch.randn(4, 6, 3, generator=g), "action_is_pad": torch.zeros(4, 6, dtype=torch.bool),
            "indicator": torch.full((4,), indicator), "task": ["push the block"] * 4}


def test_smolvla_trains_with_the_indicator_in_its_tokenized_prompt(tmp_path, monkeypatch):
    from lerobot.utils.constants import OBS_LANGUAGE_TOKENS

    from tests.training.language_policy import check_trains_and_samples
    from training import recap

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = _adapter(tiny_smolvlm(tmp_path / "smolvlm"))
    assert model.cfg.indicator_as_text
    pos = model._condition(_batch(recap.INDICATOR_POSITIVE), torch.full((4,), recap.INDICATOR_POSITIVE))
    neg = model._condition(_batch(recap.INDICATOR_NEGATIVE), torch.full((4,), recap.INDICATOR_NEGATIVE))
    assert pos["task"][0] == "push the block\nAdvantage: positive"
    assert not torch.equal(pos[OBS_LANGUAGE_TOKENS], neg[OBS_LANGUAGE_TOKENS])  # the model sees the indicator
    check_trains_and_samples(model, _batch, steps=8)
    from tests.training.test_lerobot_adapter import check_awr_weights

    check_awr_weights(model, _batch(recap.INDICATOR_POSITIVE))  # LeRobot's own per-sample loss (reduction="none")


def test_a_smolvla_artifact_carries_its_tokenizer_and_vlm_config(tmp_path):
    """Serving reads the tokenizer and the VLM's config and processor from the verified artifact, not
    from the folder of training time: save, delete that folder, load, predict the same chunks."""
    import shutil

    import numpy as np

    from data.stats import FeatureStats
    from training.artifacts import ArtifactError
    from training.policies.policy import Observation, Policy, load_policy

    vlm = tiny_smolvlm(tmp_path / "smolvlm")
    rng = np.random.default_rng(0)
    stats = {"observation.state": FeatureStats.of(rng.normal(size=(20, 5))),
             "action": FeatureStats.of(rng.normal(size=(20, 3)))}
    torch.manual_seed(0)
    policy = Policy("lerobot:smolvla", _config(vlm), stats).eval()
    obs = [Observation(rng.normal(size=5).astype(np.float32), {"front": rng.integers(0, 255, (32, 32, 3), np.uint8)},
                       "push the block", seed) for seed in (0, 1)]
    before = policy.predict_chunk(obs, beta=2.0)
    manifest = policy.save(tmp_path / "artifact")
    assert {"asset.tokenizer.json", "asset.tokenizer_config.json", "asset.config.json"} <= set(manifest["files"])
    shutil.rmtree(vlm)
    again, _ = load_policy(tmp_path / "artifact")
    assert np.allclose(again.predict_chunk(obs, beta=2.0), before, atol=1e-5)
    tok = tmp_path / "artifact" / "asset.tokenizer.json"
    tok.write_text(tok.read_text().replace("push", "pull"))
    with pytest.raises(ArtifactError, match="asset.tokenizer.json"):  # verified like every file
        load_policy(tmp_path / "artifact")
