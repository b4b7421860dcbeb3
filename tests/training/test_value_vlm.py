"""The transformers value backbone, tiny and built from configs (no download), with LoRA."""

import torch

from training.value.modeling_value_vlm import VLMValueConfig, VLMValueFunction


def _batch(B=8):
    g = torch.Generator().manual_seed(0)
    ret = -torch.rand(B, generator=g)
    return {"state": torch.randn(B, 6, generator=g), "images": {"front": torch.rand(B, 3, 32, 32, generator=g)},
            "texts": ["push the block to the goal"] * B, "return": ret,
            "elapsed": torch.rand(B, generator=g)}  # the elapsed fraction of the time limit (a time-aware V)


def test_tiny_vlm_value_fits_and_lora_freezes_the_rest():
    torch.manual_seed(0)
    vf = VLMValueFunction(VLMValueConfig(state_dim=6, cameras=["front"], image_size=32))
    batch = _batch()
    opt = torch.optim.AdamW(vf.parameters(), lr=3e-3)
    first = vf.loss(batch).item()
    for _ in range(40):
        loss = vf(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    v = vf.value(batch)
    assert v.shape == (8,) and ((v >= -1) & (v <= 0)).all()
    assert torch.corrcoef(torch.stack([v, batch["return"]]))[0, 1] > 0.5

    lora = VLMValueFunction(VLMValueConfig(state_dim=6, cameras=["front"], image_size=32, lora_rank=4))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable)
    assert not any(n.startswith("vision.") for n in trainable)
    assert not any(n.startswith("lm.") and "lora_" not in n for n in trainable)


def test_value_trainer_runs_the_vlm_backbone(tmp_path):
    import numpy as np

    from tests.training.test_value_policy_run import _toy_store
    from training.steps import load_steps
    from training.value import ValueConfig
    from training.value.trainer_value import fit_value, predict_values, task_max_lengths

    store = _toy_store(tmp_path / "s", n=6)
    table = load_steps(store, store.episode_ids())
    cfg = ValueConfig(state_dim=3, steps=10, batch_size=16, backbone="vlm")
    max_len = task_max_lengths(table)
    vf, sstats, losses = fit_value(table, cfg, max_len=max_len, progress=False)
    assert vf.cfg.time_input  # the elapsed time joins the state token
    v = predict_values(vf, table, sstats, max_len=max_len)
    assert len(v) == len(table) and np.isfinite(v).all() and len(losses) == 10
