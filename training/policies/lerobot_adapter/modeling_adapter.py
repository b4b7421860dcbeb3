"""LeRobotAdapter: wraps a LeRobot policy so it trains on our batches with the advantage indicator.

- language-conditioned policies (pi0, pi05, SmolVLA): "Advantage: positive|negative" is appended to the
  task prompt (nothing appended when the indicator is dropped);
- the others (ACT, diffusion, ...): the indicator enters as three one-hot inputs concatenated to the
  state, so the policy's state projection learns an indicator embedding;
- optionally LoRA (peft) on the backbone's linear layers, everything else frozen.
Normalisation is ours (mean/std stats), applied before the batch reaches the policy.
"""

from __future__ import annotations

import torch
from torch import nn

from training import recap
from training.policies.lerobot_adapter.configuration_adapter import LeRobotAdapterConfig


def _build_policy(cfg: LeRobotAdapterConfig) -> nn.Module:
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.factory import get_policy_class, make_policy_config

    cls = get_policy_class(cfg.policy_type)
    if cfg.pretrained_path:  # real use: a trained checkpoint (never in tests, CI or the demo)
        return cls.from_pretrained(cfg.pretrained_path)
    state_dim = cfg.state_dim + (0 if cfg.indicator_as_text else 3)
    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))}
    for name, shape in cfg.cameras.items():
        inputs[f"observation.images.{name}"] = PolicyFeature(type=FeatureType.VISUAL, shape=tuple(shape))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(cfg.action_dim,))}
    kwargs = dict(cfg.policy_kwargs)
    if cfg.policy_type == "act":
        kwargs.setdefault("pretrained_backbone_weights", None)  # no download
    if "chunk_size" in kwargs and cfg.policy_type in ("act", "smolvla", "pi0", "pi05"):
        kwargs.setdefault("n_action_steps", kwargs["chunk_size"])  # LeRobot refuses n_action_steps > chunk_size
    pcfg = make_policy_config(cfg.policy_type, input_features=inputs, output_features=outputs, device="cpu", **kwargs)
    return cls(pcfg)


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
        onehot = torch.nn.functional.one_hot(indicator, 3).to(batch["observation.state"].dtype)
        batch["observation.state"] = torch.cat([batch["observation.state"], onehot], dim=-1)
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
    def __init__(self, cfg: LeRobotAdapterConfig):
        super().__init__()
        self.cfg = cfg
        self.policy = _build_policy(cfg)
        if cfg.lora_rank > 0:
            self.policy = _apply_lora(self.policy, cfg)

    def _condition(self, batch: dict, indicator: torch.Tensor) -> dict:
        batch = condition_batch(batch, indicator, as_text=self.cfg.indicator_as_text)
        return self._tokenize(batch) if self.cfg.indicator_as_text else batch

    def _tokenize(self, batch: dict) -> dict:
        """Language policies read tokens: the conditioned prompt is tokenized here, as LeRobot's own
        preprocessor would (newline-terminated, padded to the policy's length), with the policy's
        tokenizer (a local folder in tests, the hub checkpoint's for real use)."""
        from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

        from training.policies.lerobot_adapter.configuration_adapter import DEFAULT_TOKENIZERS

        pc = self.policy.config
        if getattr(self, "_tokenizer", None) is None:
            from transformers import AutoTokenizer

            name = (self.cfg.tokenizer or getattr(pc, "vlm_model_name", None)
                    or DEFAULT_TOKENIZERS.get(self.cfg.policy_type))
            self._tokenizer = AutoTokenizer.from_pretrained(name)
        if self.cfg.policy_type == "pi05":  # pi05 reads the state as text too: LeRobot's own prompt step
            batch = {**batch, "task": _pi05_prompts(batch, pc.max_state_dim)}
        texts = [t if t.endswith("\n") or self.cfg.policy_type == "pi05" else t + "\n" for t in batch["task"]]
        tok = self._tokenizer(texts, max_length=getattr(pc, "tokenizer_max_length", 48), truncation=True,
                              padding=getattr(pc, "pad_language_to", "max_length"), padding_side="right",
                              return_tensors="pt")
        device = batch["observation.state"].device
        return {**batch, OBS_LANGUAGE_TOKENS: tok["input_ids"].to(device),
                OBS_LANGUAGE_ATTENTION_MASK: tok["attention_mask"].bool().to(device)}

    def forward(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training loss with indicator dropout (the same model also learns pi(a | o, l))."""
        ind = recap.drop_indicators(batch["indicator"], self.cfg.indicator_dropout, generator)
        b = {k: v for k, v in self._condition(batch, ind).items() if k not in ("indicator", "weight", "texts")}
        loss, _ = self.policy.forward(b)
        return loss

    @property
    def train_horizon(self) -> int:
        """Actions per training sample: the chunk (diffusion: its whole horizon, of which it serves
        n_action_steps)."""
        return int(self.policy.config.horizon) if self.cfg.policy_type == "diffusion" else self.cfg.chunk

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
        return self.policy.predict_action_chunk(self._condition(batch, ind), **kwargs)[:, : self.cfg.chunk]

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
