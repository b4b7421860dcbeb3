"""The LeRobot adapter with tiny policies built from local configs (no weight or tokenizer download)."""

import numpy as np
import pytest
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


def _diffusion_cfg(cameras=None, **over):
    return LeRobotAdapterConfig(
        policy_type="diffusion", state_dim=5, action_dim=3, cameras=cameras or {}, steps=4, batch_size=8, lr=1e-3,
        policy_kwargs=dict(horizon=8, n_action_steps=4, down_dims=[16, 32], kernel_size=3, n_groups=4,
                           diffusion_step_embed_dim=16, num_inference_steps=4, spatial_softmax_num_keypoints=4,
                           use_group_norm=True, **over))


def _policy(cfg):
    from data.stats import FeatureStats
    from training.policies.policy import Policy
    from training.policies.registry import type_of

    rng = np.random.default_rng(0)
    stats = {"observation.state": FeatureStats.of(rng.normal(size=(50, 5)).astype(np.float32)),
             "action": FeatureStats.of(rng.normal(size=(50, 3)).astype(np.float32))}
    torch.manual_seed(0)
    return Policy(type_of(cfg), cfg, stats)


def _act_state_only():
    return LeRobotAdapterConfig(
        policy_type="act", state_dim=5, action_dim=3,
        policy_kwargs=dict(chunk_size=8, dim_model=32, n_heads=2, dim_feedforward=64, n_encoder_layers=1,
                           n_decoder_layers=1, n_vae_encoder_layers=1, latent_dim=8))


def check_awr_weights(model, batch: dict) -> None:
    """Method.AWR's weights reach a LeRobot backbone as they reach the native policy: all-equal weights
    give the plain loss, and a sample with weight 0 contributes no gradient (its target may be anything)."""
    model.train()
    B = batch["action"].shape[0]

    def loss_and_grads(b):
        torch.manual_seed(3)  # the same noise, timesteps, latents and dropped indicators in every call
        model.zero_grad()
        loss = model(b)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, _ = loss_and_grads(batch)
    equal, _ = loss_and_grads(batch | {"weight": torch.full((B,), 0.7)})
    assert equal == pytest.approx(plain, rel=1e-5)
    other_target = batch["action"].clone()
    other_target[B - 1] += 5.0
    zero_last = torch.linspace(2.0, 0.5, B)
    zero_last[-1] = 0.0
    for w, same in ((zero_last, True), (torch.ones(B), False)):
        _, g1 = loss_and_grads(batch | {"weight": w})
        _, g2 = loss_and_grads(batch | {"weight": w, "action": other_target})
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2)) == same


@pytest.mark.parametrize("make_cfg", [_act_state_only, _diffusion_cfg], ids=["act", "diffusion"])
def test_awr_weights_scale_each_samples_loss(make_cfg):
    """ACT and diffusion, whose LeRobot loss is a mean: the adapter computes it per sample."""
    policy = _policy(make_cfg())
    g = torch.Generator().manual_seed(1)
    B, H = 4, policy.train_horizon
    check_awr_weights(policy.model, {"observation.state": torch.randn(B, 5, generator=g),
                                     "action": torch.randn(B, H, 3, generator=g),
                                     "action_is_pad": torch.zeros(B, H, dtype=torch.bool), "task": ["push"] * B,
                                     "indicator": torch.tensor([1, 0, 1, 2])})


@pytest.mark.slow
def test_diffusion_trains_and_serves_through_the_policy_contract(tmp_path):
    """lerobot:diffusion (one observation step) state-only and with a camera: it trains on its
    horizon, predicts chunks from an observation's seed (batched or not), and guidance moves them."""
    from training.policies.policy import Observation, load_policy

    for cameras in ({}, {"front": (3, 24, 24)}):
        policy = _policy(_diffusion_cfg(cameras, crop_shape=None))
        assert policy.chunk == 4 and policy.train_horizon == 8 and policy.noise_shape == (8, 3)
        rng = np.random.default_rng(0)
        images = {c: rng.integers(0, 255, size=(8, 24, 24, 3), dtype=np.uint8) for c in cameras}
        batch = policy.training_batch(rng.normal(size=(8, 5)).astype(np.float32), images, ["push"] * 8,
                                      rng.normal(size=(8, 8, 3)).astype(np.float32), np.zeros((8, 8), bool), "cpu")
        batch["indicator"] = torch.tensor([1, 0] * 4)
        opt = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
        losses = []
        for _ in range(4):
            torch.manual_seed(0)
            loss = policy.model.train()(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert np.isfinite(losses).all() and losses[-1] < losses[0]
        policy.eval()
        obs = [Observation(rng.normal(size=5).astype(np.float32), {c: v[i] for c, v in images.items()}, "push", i)
               for i in range(3)]
        out = policy.predict_chunk(obs)
        assert out.shape == (3, 4, 3) and np.isfinite(out).all()
        assert np.allclose(policy.predict_chunk(obs[1:2])[0], out[1], atol=1e-5)  # the seed decides, not the batch
        neg = policy.predict_chunk(obs, indicator=recap.INDICATOR_NEGATIVE)
        guided = policy.predict_chunk(obs, beta=2.0)
        assert not np.allclose(out, neg) and not np.allclose(out, guided) and np.isfinite(guided).all()
        policy.save(tmp_path / f"d{len(cameras)}")
        again, _ = load_policy(tmp_path / f"d{len(cameras)}")
        assert np.allclose(again.predict_chunk(obs, beta=2.0), guided, atol=1e-5)


def test_a_policy_fine_tuned_from_a_checkpoint_loads_from_its_artifact_alone(tmp_path):
    """pretrained_path: training starts from the checkpoint's weights; the artifact carries the
    checkpoint's architecture, so serving loads it after the checkpoint is gone."""
    import dataclasses
    import shutil

    from training.policies.policy import Observation, Policy, load_policy

    cfg = _act().cfg
    base = LeRobotAdapter(cfg)
    base.policy.save_pretrained(tmp_path / "ckpt")
    tuned_cfg = dataclasses.replace(cfg, pretrained_path=str(tmp_path / "ckpt"))
    stats = _policy(cfg).stats
    policy = Policy("lerobot:act", tuned_cfg, stats)
    for a, b in zip(base.policy.state_dict().values(), policy.model.policy.state_dict().values()):
        assert torch.equal(a, b)  # started from the checkpoint's weights
    with torch.no_grad():
        for p in policy.model.parameters():
            p.add_(0.01)  # "fine-tuned"
    policy.eval()
    rng = np.random.default_rng(0)
    obs = [Observation(rng.normal(size=5).astype(np.float32), {"front": rng.integers(0, 255, (32, 32, 3), np.uint8)},
                       "push", i) for i in range(2)]
    before = policy.predict_chunk(obs)
    policy.save(tmp_path / "artifact")
    shutil.rmtree(tmp_path / "ckpt")
    again, manifest = load_policy(tmp_path / "artifact")
    assert "asset.lerobot_checkpoint_config.json" in manifest["files"]
    assert np.allclose(again.predict_chunk(obs), before, atol=1e-5)


def test_diffusion_with_a_history_trains_on_the_window_the_robot_sends(tmp_path):
    """lerobot:diffusion with n_obs_steps = 2: a training sample holds the tick and the one before it
    (the episode's first tick standing in before the start) and its actions from the older one on, as
    LeRobot windows them; the simulated robot's observation at each tick is exactly that window, and
    the policy predicts from it. A type that reads one observation refuses a history."""
    from data.store import EpisodeStore
    from tests.store.helpers import record
    from training.methods import PolicyData
    from training.policies.trainer_policy import policy_batch
    from training.sim.collect import PolicyActor
    from training.steps import load_steps

    store = EpisodeStore(tmp_path / "store")
    ep, _ = record(store, ticks=6, cameras=1)
    cam = ep.cameras[0]
    table = load_steps(store, [ep.episode_id], cameras=[cam])
    assert table.history(np.array([0, 1, 5]), 2).tolist() == [[0, 0], [0, 1], [4, 5]]
    acts, pad = table.action_chunks(np.array([0, 4]), 3, start=-1)
    assert np.array_equal(acts[0], table.action[[0, 0, 1]]) and pad.tolist() == [[True, False, False], [False] * 3]
    assert table.action_chunks(np.array([5]), 3, start=-1)[1].tolist() == [[False, False, True]]

    h, w, _ = ep.image(cam, 0).shape
    S, A = table.state.shape[1], table.action.shape[1]
    cfg = LeRobotAdapterConfig(policy_type="diffusion", state_dim=S, action_dim=A, cameras={cam: (3, h, w)},
                               n_obs_steps=2, policy_kwargs=dict(horizon=8, n_action_steps=4, down_dims=[16, 32],
                                                                 kernel_size=3, n_groups=4, diffusion_step_embed_dim=16,
                                                                 num_inference_steps=4, spatial_softmax_num_keypoints=4,
                                                                 use_group_norm=True))
    from data.stats import FeatureStats
    from training.policies.policy import Policy

    torch.manual_seed(0)
    policy = Policy("lerobot:diffusion", cfg, {"observation.state": FeatureStats.of(table.state),
                                               "action": FeatureStats.of(table.action)})
    assert (policy.n_obs_steps, policy.action_start, policy.train_horizon, policy.chunk) == (2, -1, 8, 4)
    data = PolicyData(np.arange(len(table)), np.ones(len(table), np.int64), None)
    batch = policy_batch(policy, table, data, np.array([0, 3]), "cpu")
    assert batch["observation.state"].shape == (2, 2, S) and batch[f"observation.images.{cam}"].shape == (2, 2, 3, h, w)
    assert batch["action"].shape == (2, 8, A) and batch["action_is_pad"][0, 0]
    assert batch["action_is_pad"][1].tolist() == [False] * 4 + [True] * 4  # ticks 2..9 of 6
    loss = policy.model.train()(batch)
    loss.backward()
    assert torch.isfinite(loss)

    policy.eval()
    actor = PolicyActor(policy, "push it", seed=1)
    actor.reset()
    for t in range(4):
        obs = actor.observation(ep.state[t], {cam: ep.image(cam, t)})
        window = table.history(np.array([t]), 2)[0]
        assert np.array_equal(obs.state, table.state[window])
        assert np.array_equal(obs.images[cam], np.stack([ep.image(cam, int(i)) for i in window]))
        actor.observe(ep.state[t], {cam: ep.image(cam, t)})
    out = policy.predict_chunk([obs])
    assert out.shape == (1, 4, A) and np.isfinite(out).all()
    with pytest.raises(ValueError, match="n_obs_steps"):
        LeRobotAdapterConfig(policy_type="act", state_dim=S, action_dim=A, n_obs_steps=2)
