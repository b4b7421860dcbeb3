"""LeRobotAdapter: wraps a LeRobot policy so it trains on our batches with the advantage indicator.

- language-conditioned policies (pi0, pi05, SmolVLA): "Advantage: positive|negative" is appended to the
  task prompt (nothing appended when the indicator is dropped);
- the others (ACT, diffusion, ...): the indicator enters as three one-hot inputs concatenated to the
  state, so the policy's state projection learns an indicator embedding;
- optionally LoRA (peft) on the backbone's linear layers, everything else frozen.
Normalisation is ours (mean/std stats), applied before the batch reaches the policy.
- AWR: a batch's "weight" scales each sample's loss, as in the native policy (LeRobot's own per-sample
  loss where its forward offers reduction="none"; ACT and diffusion, which only return a mean, through
  the same computation per sample);
- a policy without cameras gets its state as LeRobot's environment state too (ACT and diffusion need
  an image or an environment state);
- diffusion reads the last `n_obs_steps` observations (the config's; observations then carry a time
  axis, oldest first: (B, n_obs_steps, ...)) and trains on its whole horizon of actions, from the oldest
  of them on, as LeRobot's own dataset windows it; its default sampler is DDIM, deterministic given the
  starting noise, so guidance's two passes and a batched request start and end alike;
- language policies keep their tokenizer (SmolVLA: also its VLM's config and processor) as `assets()`,
  saved with the artifact and read back from it: serving never needs the folders of training time.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from training import recap
from training.policies.lerobot_adapter.configuration_adapter import DEFAULT_TOKENIZERS, LeRobotAdapterConfig

OBS_STATE, OBS_ENV_STATE, OBS_IMAGES = "observation.state", "observation.environment_state", "observation.images"
CHECKPOINT_CONFIG = "lerobot_checkpoint_config.json"  # asset: the architecture of a fine-tuned checkpoint


def _build_policy(cfg: LeRobotAdapterConfig, assets_dir: Path | None = None) -> nn.Module:
    """The LeRobot policy; `assets_dir`: a language policy's tokenizer (and SmolVLA's VLM config and
    processor) as an artifact carries them, used instead of the folders or hub ids of the config."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import get_policy_class, make_policy_config

    cls = get_policy_class(cfg.policy_type)
    if cfg.pretrained_path:
        saved = assets_dir / CHECKPOINT_CONFIG if assets_dir is not None else None
        if saved is not None and saved.exists():
            return cls(_checkpoint_config(cfg, assets_dir))  # the artifact's weights are loaded over it
        return cls.from_pretrained(cfg.pretrained_path)  # training: start from the checkpoint's weights
    state_dim = cfg.state_dim + (0 if cfg.indicator_as_text else 3)
    inputs = {OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))}
    for name, shape in cfg.cameras.items():
        inputs[f"observation.images.{name}"] = PolicyFeature(type=FeatureType.VISUAL, shape=tuple(shape))
    if _state_as_env(cfg):
        inputs[OBS_ENV_STATE] = PolicyFeature(type=FeatureType.ENV, shape=(state_dim,))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(cfg.action_dim,))}
    kwargs = dict(cfg.policy_kwargs)
    if cfg.policy_type in ("act", "diffusion"):
        kwargs.setdefault("pretrained_backbone_weights", None)  # no download
    if cfg.policy_type == "diffusion":
        kwargs["n_obs_steps"] = cfg.n_obs_steps  # the adapter's field: the processing and the wire follow it
        kwargs.setdefault("noise_scheduler_type", "DDIM")  # deterministic given the starting noise
    if "chunk_size" in kwargs and cfg.policy_type in ("act", "smolvla", "pi0", "pi05"):
        kwargs.setdefault("n_action_steps", kwargs["chunk_size"])  # LeRobot refuses n_action_steps > chunk_size
    if assets_dir is not None and cfg.policy_type == "smolvla":
        kwargs.update(vlm_model_name=str(assets_dir), load_vlm_weights=False)  # the weights are the artifact's
    pcfg = make_policy_config(cfg.policy_type, input_features=inputs, output_features=outputs, device="cpu", **kwargs)
    return cls(pcfg)


def _checkpoint_config(cfg: LeRobotAdapterConfig, assets_dir: Path):
    """The LeRobot config of the checkpoint a policy was fine-tuned from, as its artifact carries it:
    loading an artifact builds that architecture without reading the checkpoint again (the serving
    machine need not have it) and without fetching any pretrained weights."""
    from lerobot.configs.policies import PreTrainedConfig

    folder = assets_dir / "checkpoint"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_bytes((assets_dir / CHECKPOINT_CONFIG).read_bytes())
    pcfg = PreTrainedConfig.from_pretrained(folder)
    pcfg.device = "cpu"
    if hasattr(pcfg, "pretrained_backbone_weights"):
        pcfg.pretrained_backbone_weights = None
    if cfg.policy_type == "smolvla":
        pcfg.vlm_model_name, pcfg.load_vlm_weights = str(assets_dir), False
    return pcfg


def _state_as_env(cfg: LeRobotAdapterConfig) -> bool:
    return not cfg.cameras and not cfg.indicator_as_text


def _act_losses(policy: nn.Module, batch: dict) -> torch.Tensor:
    """ACTPolicy.forward's loss (masked L1 + weighted KL) per sample: (B,)."""
    if policy.config.image_features:
        batch = {**batch, OBS_IMAGES: [batch[k] for k in policy.config.image_features]}
    actions_hat, (mu, log_sigma_x2) = policy.model(batch)
    valid = ~batch["action_is_pad"].unsqueeze(-1)
    err = F.l1_loss(batch["action"], actions_hat, reduction="none") * valid
    loss = err.sum((1, 2)) / (valid.sum((1, 2)) * err.shape[-1]).clamp_min(1)
    if policy.config.use_vae and log_sigma_x2 is not None:
        kld = (-0.5 * (1 + log_sigma_x2 - mu.pow(2) - log_sigma_x2.exp())).sum(-1)
        loss = loss + kld * policy.config.kl_weight
    return loss


def _diffusion_losses(policy: nn.Module, batch: dict) -> torch.Tensor:
    """DiffusionModel.compute_loss per sample (the same draws in the same order): (B,)."""
    cfg, model = policy.config, policy.diffusion
    if cfg.image_features:
        batch = {**batch, OBS_IMAGES: torch.stack([batch[k] for k in cfg.image_features], dim=-4)}
    global_cond = model._prepare_global_conditioning(batch)
    trajectory = batch["action"]
    eps = torch.randn(trajectory.shape, device=trajectory.device)
    t = torch.randint(0, model.noise_scheduler.config.num_train_timesteps, (trajectory.shape[0],),
                      device=trajectory.device).long()
    pred = model.unet(model.noise_scheduler.add_noise(trajectory, eps, t), t, global_cond=global_cond)
    err = F.mse_loss(pred, eps if cfg.prediction_type == "epsilon" else trajectory, reduction="none")
    if not cfg.do_mask_loss_for_padding:
        return err.mean((1, 2))
    valid = ~batch["action_is_pad"].unsqueeze(-1)
    return (err * valid).sum((1, 2)) / (valid.sum((1, 2)) * err.shape[-1]).clamp_min(1)


def _apply_lora(policy: nn.Module, cfg: LeRobotAdapterConfig) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    targets = cfg.lora_targets or sorted({name.split(".")[-1] for name, m in policy.named_modules()
                                          if isinstance(m, nn.Linear)})
    lcfg = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0)
    policy = inject_adapter_in_model(lcfg, policy)
    for name, p in policy.named_parameters():
        p.requires_grad = "lora_" in name
    return policy


def condition_batch(batch: dict, indicator: torch.Tensor, *, as_text: bool) -> dict:
    """The indicator into the batch: appended to each task prompt, or one-hot onto the state."""
    batch = dict(batch)
    if as_text:
        batch["task"] = [recap.advantage_prompt(t, int(i)) for t, i in zip(batch["task"], indicator)]
    else:
        state = batch["observation.state"]
        onehot = torch.nn.functional.one_hot(indicator, 3).to(state.dtype)
        if state.dim() == 3:  # a history (B, n_obs_steps, S): the same indicator at every step
            onehot = onehot[:, None].expand(-1, state.shape[1], -1)
        batch["observation.state"] = torch.cat([state, onehot], dim=-1)
    return batch


def _pi05_prompts(batch: dict, max_state_dim: int) -> list[str]:
    """"Task: …, State: <256-bin tokens>;\nAction: " through LeRobot's Pi05PrepareStateTokenizerProcessorStep
    (our states are mean/std normalised; the step's bins span [-1, 1] and clip beyond)."""
    from lerobot.policies.pi05.processor_pi05 import Pi05PrepareStateTokenizerProcessorStep
    from lerobot.lerobot_types import TransitionKey

    step = Pi05PrepareStateTokenizerProcessorStep(max_state_dim=max_state_dim)
    out = step({TransitionKey.OBSERVATION: {"observation.state": batch["observation.state"]},
                TransitionKey.COMPLEMENTARY_DATA: {"task": list(batch["task"])}})
    return out[TransitionKey.COMPLEMENTARY_DATA]["task"]


class LeRobotAdapter(nn.Module):
    def __init__(self, cfg: LeRobotAdapterConfig, assets: Mapping[str, bytes] | None = None):
        """`assets`: the files `assets()` returned when the policy was saved (from its artifact)."""
        super().__init__()
        self.cfg = cfg
        self._tokenizer = None
        with tempfile.TemporaryDirectory() as tmp:
            assets_dir = None
            if assets:
                assets_dir = Path(tmp)
                for name, data in assets.items():
                    (assets_dir / name).write_bytes(data)
            self.policy = _build_policy(cfg, assets_dir)
            if cfg.indicator_as_text:
                from transformers import AutoTokenizer

                pc = self.policy.config
                name = assets_dir or (cfg.tokenizer or getattr(pc, "vlm_model_name", None)
                                      or DEFAULT_TOKENIZERS.get(cfg.policy_type))
                self._tokenizer = AutoTokenizer.from_pretrained(str(name))
        if cfg.lora_rank > 0:
            self.policy = _apply_lora(self.policy, cfg)

    def assets(self) -> dict[str, bytes]:
        """Files the policy needs besides its weights, to be saved with it: a language policy's
        tokenizer, and SmolVLA's VLM config and processor (its model is built from them)."""
        out = {}
        if self.cfg.pretrained_path:
            with tempfile.TemporaryDirectory() as tmp:
                self.policy.config._save_pretrained(Path(tmp))
                out[CHECKPOINT_CONFIG] = (Path(tmp) / "config.json").read_bytes()
        if self._tokenizer is None:
            return out
        with tempfile.TemporaryDirectory() as tmp:
            if self.cfg.policy_type == "smolvla":
                vlm = self.policy.model.vlm_with_expert
                vlm.config.save_pretrained(tmp)
                vlm.processor.save_pretrained(tmp)
            self._tokenizer.save_pretrained(tmp)
            return out | {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}

    def _condition(self, batch: dict, indicator: torch.Tensor) -> dict:
        batch = condition_batch(batch, indicator, as_text=self.cfg.indicator_as_text)
        return self._tokenize(batch) if self.cfg.indicator_as_text else batch

    def _tokenize(self, batch: dict) -> dict:
        """Language policies read tokens: the conditioned prompt is tokenized here, as LeRobot's own
        preprocessor would (newline-terminated, padded to the policy's length), with the policy's
        tokenizer (saved with the artifact)."""
        from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

        pc = self.policy.config
        if self.cfg.policy_type == "pi05":  # pi05 reads the state as text too: LeRobot's own prompt step
            batch = {**batch, "task": _pi05_prompts(batch, pc.max_state_dim)}
        texts = [t if t.endswith("\n") or self.cfg.policy_type == "pi05" else t + "\n" for t in batch["task"]]
        tok = self._tokenizer(texts, max_length=getattr(pc, "tokenizer_max_length", 48), truncation=True,
                              padding=getattr(pc, "pad_language_to", "max_length"), padding_side="right",
                              return_tensors="pt")
        device = batch["observation.state"].device
        return {**batch, OBS_LANGUAGE_TOKENS: tok["input_ids"].to(device),
                OBS_LANGUAGE_ATTENTION_MASK: tok["attention_mask"].bool().to(device)}

    def _inputs(self, batch: dict, indicator: torch.Tensor) -> dict:
        """Our batch, conditioned on `indicator`, as the LeRobot policy reads it."""
        b = {k: v for k, v in self._condition(batch, indicator).items() if k not in ("indicator", "weight", "texts")}
        if _state_as_env(self.cfg):
            b[OBS_ENV_STATE] = b[OBS_STATE]
        if self.cfg.policy_type == "diffusion" and b[OBS_STATE].dim() == 2:  # its time axis: one observation step
            b = {k: v.unsqueeze(1) if k.startswith("observation.") and torch.is_tensor(v) else v for k, v in b.items()}
        return b

    def _per_sample_losses(self, b: dict) -> torch.Tensor:
        if self.cfg.policy_type == "act":
            return _act_losses(self.policy, b)
        if self.cfg.policy_type == "diffusion":
            return _diffusion_losses(self.policy, b)
        if "reduction" in inspect.signature(self.policy.forward).parameters:
            return self.policy.forward(b, reduction="none")[0]
        raise NotImplementedError(f"lerobot:{self.cfg.policy_type} has no per-sample loss for weighted (AWR) training")

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss with indicator dropout (the same model also learns pi(a | o, l)); with a
        "weight" per sample (AWR), the weighted mean of the per-sample losses, as the native policy."""
        ind = recap.drop_indicators(batch["indicator"], self.cfg.indicator_dropout, generator)
        b = self._inputs(batch, ind)
        w = batch.get("weight")
        if w is None:
            return self.policy.forward(b)[0]
        return (self._per_sample_losses(b) * w).sum() / w.sum().clamp_min(1e-12)  # all-~0 weights: no step

    @property
    def train_horizon(self) -> int:
        """Actions per training sample: the chunk (diffusion: its whole horizon, of which it serves
        n_action_steps)."""
        return int(self.policy.config.horizon) if self.cfg.policy_type == "diffusion" else self.cfg.chunk

    @property
    def action_start(self) -> int:
        """Where a training sample's actions start, relative to its tick: diffusion's horizon begins at
        its oldest observation (1 - n_obs_steps), the others' at the tick itself."""
        return 1 - self.cfg.n_obs_steps if self.cfg.policy_type == "diffusion" else 0

    @property
    def noise_shape(self) -> tuple[int, int] | None:
        """The starting noise of one sample for flow / diffusion backbones (None: deterministic, as ACT)."""
        pc = self.policy.config
        if self.cfg.policy_type in ("smolvla", "pi0", "pi05"):
            return (pc.chunk_size, pc.max_action_dim)
        if self.cfg.policy_type == "diffusion":
            return (pc.horizon, self.cfg.action_dim)
        return None

    def _chunk(self, batch: dict, indicator: int, noise: torch.Tensor | None) -> torch.Tensor:
        B = batch["observation.state"].shape[0]
        ind = torch.full((B,), indicator, dtype=torch.long, device=batch["observation.state"].device)
        kwargs = {} if noise is None or self.noise_shape is None else {"noise": noise}
        return self.policy.predict_action_chunk(self._inputs(batch, ind), **kwargs)[:, : self.cfg.chunk]

    @torch.no_grad()
    def sample(self, batch: dict, *, indicator: int = recap.INDICATOR_POSITIVE, beta: float = 1.0,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """A normalised action chunk conditioned on the indicator. beta != 1: classifier-free guidance,
        two passes from the same noise, conditioned (the advantage prompt, or the indicator input) and
        unconditioned (no prompt, or the 'none' input), combined a_u + beta (a_c - a_u). LeRobot owns
        the backbones' sampling loops, so guidance combines their chunks rather than each step."""
        self.policy.eval()
        cond = self._chunk(batch, indicator, noise)
        if beta == 1.0:
            return cond
        return recap.guided_velocity(self._chunk(batch, recap.INDICATOR_NONE, noise), cond, beta)

    @torch.no_grad()
    def predict_chunk(self, batch: dict, indicator: int = recap.INDICATOR_POSITIVE, beta: float = 1.0) -> torch.Tensor:
        return self.sample(batch, indicator=indicator, beta=beta)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
