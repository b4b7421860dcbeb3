"""The LeRobot adapter with tiny policies built from local configs (no weight or tokenizer download)."""

import numpy as np
import torch

from training import recap
from training.policies.lerobot_adapter import LeRobotAdapter, LeRobotAdapterConfig


def _batch(B=4, S=5, A=3, H=6, img=(3, 32, 32)):
    g = torch.Generator().manual_seed(0)
    return {
        "observation.state": torch.randn(B, S, generator=g),
        "observation.images.front": torch.rand(B, *img, generator=g),
        "action": torch.randn(B, H, A, generator=g),
        "action_is_pad": torch.zeros(B, H, dtype=torch.bool),
        "indicator": torch.tensor([recap.INDICATOR_POSITIVE, recap.INDICATOR_NEGATIVE] * (B // 2)),
        "task": ["push the block"] * B,
    }


def _act(lora_rank=0):
    return LeRobotAdapter(LeRobotAdapterConfig(
        policy_type="act", state_dim=5, action_dim=3, cameras={"front": (3, 32, 32)}, lora_rank=lora_rank,
        policy_kwargs=dict(chunk_size=6, n_action_steps=6, dim_model=32, n_heads=2, dim_feedforward=64,
                           n_encoder_layers=1, n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=8)))


def test_act_adapter_trains_with_an_indicator_embedding():
    torch.manual_seed(0)
    model = _act()
    assert not model.cfg.indicator_as_text
    batch = _batch()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(15):
        loss = model(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    pos = model.predict_chunk(batch, recap.INDICATOR_POSITIVE)
    neg = model.predict_chunk(batch, recap.INDICATOR_NEGATIVE)
    assert pos.shape == (4, 6, 3) and not torch.allclose(pos, neg)  # the indicator changes the output


def test_lora_freezes_the_backbone():
    full, lora = _act(), _act(lora_rank=4)
    assert 0 < lora.trainable_parameters() < 0.2 * full.trainable_parameters()
    loss = lora(_batch())
    loss.backward()
    grads = [n for n, p in lora.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n for n in grads)


def test_language_policies_get_the_indicator_in_the_prompt():
    from training.policies.lerobot_adapter.modeling_adapter import condition_batch

    for policy in ("smolvla", "pi05", "pi0"):
        assert LeRobotAdapterConfig(policy_type=policy, state_dim=5, action_dim=3).indicator_as_text
    out = condition_batch(_batch(), torch.tensor([1, 0, 2, 1]), as_text=True)
    assert out["task"][0].endswith("Advantage: positive") and out["task"][1].endswith("Advantage: negative")
    assert out["task"][2] == "push the block" and out["observation.state"].shape == (4, 5)


def test_the_recorded_lerobot_fields_match_the_installed_lerobot():
    """The API validates LeRobot recipes against lerobot_fields.json without importing LeRobot."""
    from training.policies.lerobot_adapter.configuration_adapter import lerobot_fields, record_lerobot_fields

    assert record_lerobot_fields() == lerobot_fields()
    assert lerobot_fields()["act"]["chunk_size"]["kind"] == "int"
