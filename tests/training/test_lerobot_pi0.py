"""pi0 and pi05 (language-conditioned LeRobot policies on PaliGemma) through the adapter, built tiny
and locally: LeRobot fixes the Gemma sizes to its two variants and PaliGemma's vision tower to
SigLIP-so400m, so the test shrinks both where LeRobot reads them (its `get_gemma_config` and the
PaliGemma config it instantiates) and writes a small Gemma-style tokenizer to a folder. The
indicator must reach the model as prompt text, and a few steps must lower the loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tests.training.language_policy import check_trains_and_samples
from training import recap


def tiny_tokenizer(d: Path) -> Path:
    words = "push pick place the block it to put in on Advantage positive negative Task State Action , ; :".split()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + words + [str(i) for i in range(256)]))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>",
                            eos_token="<eos>").save_pretrained(d)
    return d


@pytest.fixture
def tiny_paligemma(monkeypatch):
    """LeRobot's pi0 / pi05 backbones at test size (everything else in their code unchanged)."""
    import lerobot.policies.pi0.modeling_pi0 as m0
    import lerobot.policies.pi05.modeling_pi05 as m5
    from transformers import PaliGemmaConfig
    from transformers.models.auto import CONFIG_MAPPING
    from transformers.models.siglip import SiglipVisionConfig

    class TinySiglip(SiglipVisionConfig):
        """SigLIP sizes LeRobot overwrites after building the config stay at the test's values."""

        def __setattr__(self, key, value):
            if getattr(self, "_pinned", False) and key in ("intermediate_size", "projection_dim"):
                return
            super().__setattr__(key, value)

    TinySiglip.__name__ = TinySiglip.__qualname__ = "SiglipVisionConfig"  # AutoModel looks configs up by class name

    def paligemma(**_):
        vision = TinySiglip(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            patch_size=14, image_size=28, projection_dim=32)
        cfg = PaliGemmaConfig(vision_config=vision.to_dict())
        cfg.vision_config = vision
        object.__setattr__(vision, "_pinned", True)
        return cfg

    mapping = {"paligemma": paligemma, "gemma": CONFIG_MAPPING["gemma"]}
    for m in (m0, m5):
        monkeypatch.setattr(m, "CONFIG_MAPPING", mapping)
        monkeypatch.setattr(m, "get_gemma_config", lambda variant, m=m: m.GemmaConfig(
            width=32, depth=1, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=8))  # LeRobot assumes 8 heads


def _config(policy_type: str, tokenizer: Path):
    from training.policies.lerobot_adapter import LeRobotAdapterConfig

    return LeRobotAdapterConfig(
        policy_type=policy_type, state_dim=5, action_dim=3, cameras={"front": (3, 28, 28)}, tokenizer=str(tokenizer),
        policy_kwargs=dict(chunk_size=6, n_action_steps=6, num_inference_steps=2, image_resolution=(28, 28),
                           tokenizer_max_length=24, max_state_dim=8, max_action_dim=8, dtype="float32"))


def _adapter(policy_type: str, tokenizer: Path):
    from training.policies.lerobot_adapter import LeRobotAdapter

    return LeRobotAdapter(_config(policy_type, tokenizer))


def _batch(indicator: int):
    g = torch.Generator().manual_seed(0)
    return {"observation.state": torch.randn(4, 5, generator=g) * 0.5,
            "observation.images.front": torch.rand(4, 3, 28, 28, generator=g),
            "action": torch.randn(4, 6, 3, generator=g), "action_is_pad": torch.zeros(4, 6, dtype=torch.bool),
            "indicator": torch.full((4,), indicator), "task": ["push the block"] * 4}


@pytest.mark.parametrize("policy_type", ["pi0", "pi05"])
def test_pi_policies_train_with_the_indicator_in_their_tokenized_prompt(policy_type, tiny_paligemma, tmp_path,
                                                                       monkeypatch):
    from lerobot.utils.constants import OBS_LANGUAGE_TOKENS

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = _adapter(policy_type, tiny_tokenizer(tmp_path / "tok"))
    assert model.cfg.indicator_as_text
    assert sum(p.numel() for p in model.parameters()) < 30_000_000  # tiny: the 257k-token embeddings dominate
    pos = model._condition(_batch(recap.INDICATOR_POSITIVE), torch.full((4,), recap.INDICATOR_POSITIVE))
    neg = model._condition(_batch(recap.INDICATOR_NEGATIVE), torch.full((4,), recap.INDICATOR_NEGATIVE))
    if policy_type == "pi05":  # LeRobot's pi05 prompt: task, the state as 256-bin tokens, then "Action:"
        assert pos["task"][0].startswith("Task: push the block Advantage: positive, State: ")
        assert pos["task"][0].endswith(";\nAction: ")
    else:
        assert pos["task"][0] == "push the block\nAdvantage: positive"
    unk = model._tokenizer.unk_token_id
    assert not torch.equal(pos[OBS_LANGUAGE_TOKENS], neg[OBS_LANGUAGE_TOKENS])  # the model sees the indicator
    assert (pos[OBS_LANGUAGE_TOKENS][0] != unk).all()  # every word is in the vocabulary: nothing is lost
    check_trains_and_samples(model, _batch, steps=6)


def test_a_pi05_artifact_carries_its_tokenizer(tiny_paligemma, tmp_path):
    """The tokenizer is saved with the artifact and loaded from it: serving does not need the
    tokenizer folder of training time."""
    import shutil

    import numpy as np

    from data.stats import FeatureStats
    from training.policies.policy import Observation, Policy, load_policy

    tok = tiny_tokenizer(tmp_path / "tok")
    rng = np.random.default_rng(0)
    stats = {"observation.state": FeatureStats.of(rng.normal(size=(20, 5))),
             "action": FeatureStats.of(rng.normal(size=(20, 3)))}
    torch.manual_seed(0)
    policy = Policy("lerobot:pi05", _config("pi05", tok), stats).eval()
    obs = [Observation(rng.normal(size=5).astype(np.float32) * 0.5,
                       {"front": rng.integers(0, 255, (28, 28, 3), np.uint8)}, "push the block", 0)]
    before = policy.predict_chunk(obs)
    manifest = policy.save(tmp_path / "artifact")
    assert {"asset.tokenizer.json", "asset.tokenizer_config.json"} <= set(manifest["files"])
    shutil.rmtree(tok)
    again, _ = load_policy(tmp_path / "artifact")
    assert np.allclose(again.predict_chunk(obs), before, atol=1e-5)
