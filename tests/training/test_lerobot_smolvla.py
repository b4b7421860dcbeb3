"""SmolVLA (a language-conditioned LeRobot policy) through the adapter, from a tiny SmolVLM built
locally: the advantage indicator reaches the model as prompt text, tokenized as LeRobot does."""

from pathlib import Path

import torch

from training.policies.lerobot_adapter.tiny import tiny_smolvlm  # noqa: F401 (the other tests import it from here)


def _adapter(vlm: Path):
    from training.policies.lerobot_adapter import LeRobotAdapter, LeRobotAdapterConfig

    return LeRobotAdapter(LeRobotAdapterConfig(
        policy_type="smolvla", state_dim=5, action_dim=3, cameras={"front": (3, 32, 32)},
        policy_kwargs=dict(vlm_model_name=str(vlm), load_vlm_weights=False, chunk_size=6, n_action_steps=6,
                           num_steps=2, resize_imgs_with_padding=(32, 32), tokenizer_max_length=16, num_vlm_layers=2,
                           num_expert_layers=1, max_state_dim=8, max_action_dim=8)))


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
