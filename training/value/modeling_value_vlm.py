"""A transformers-based value function for GPUs: a vision tower and a small language model, with
image patches, the robot state and the task text as one token sequence; the last token's hidden
state feeds the same 201-bin head as the native value function. LoRA (peft) on the language
model's attention; everything is built from configs, so tests and CI download nothing.

Real use: `VLMValueConfig(vision=..., language=..., pretrained_language="<local path or hub id>",
tokenizer="<same>")` loads pretrained weights and the tokenizer once, on a machine with them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from training import recap
from training.encoders import hash_tokens


@dataclass
class VLMValueConfig:
    state_dim: int
    cameras: list[str] = field(default_factory=list)
    image_size: int = 64
    num_bins: int = 201
    # configs (kwargs of SiglipVisionConfig / LlamaConfig) or pretrained names
    vision: dict = field(default_factory=lambda: dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                      num_attention_heads=2, patch_size=16))
    language: dict = field(default_factory=lambda: dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                        num_attention_heads=2, num_key_value_heads=2, vocab_size=4096,
                                                        max_position_embeddings=256))
    pretrained_vision: str | None = None
    pretrained_language: str | None = None
    tokenizer: str | None = None  # None: hashed words into the vocabulary (tests, no download)
    lora_rank: int = 0
    lora_alpha: int = 16
    max_text_tokens: int = 32
    time_input: bool = True  # the elapsed fraction of the time limit joins the state token (batch["elapsed"])


class VLMValueFunction(nn.Module):
    def __init__(self, cfg: VLMValueConfig):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel, SiglipVisionConfig, SiglipVisionModel

        self.cfg = cfg
        if cfg.pretrained_vision:
            self.vision = SiglipVisionModel.from_pretrained(cfg.pretrained_vision)
        else:
            self.vision = SiglipVisionModel(SiglipVisionConfig(image_size=cfg.image_size, **cfg.vision))
        if cfg.pretrained_language:
            self.lm = LlamaModel.from_pretrained(cfg.pretrained_language)
        else:
            self.lm = LlamaModel(LlamaConfig(**cfg.language))
        d = self.lm.config.hidden_size
        self.tokenizer = None
        if cfg.tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
        self.image_proj = nn.Linear(self.vision.config.hidden_size, d)
        from training.value.modeling_value import TIME_FEATURES

        state_in = cfg.state_dim + (TIME_FEATURES if cfg.time_input else 0)
        self.state_proj = nn.Sequential(nn.Linear(state_in, d), nn.GELU(), nn.Linear(d, d))
        self.head = nn.Linear(d, cfg.num_bins)
        if cfg.lora_rank > 0:
            from peft import LoraConfig, inject_adapter_in_model

            self.lm = inject_adapter_in_model(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                                         target_modules=["q_proj", "v_proj"]), self.lm)
            for name, p in self.lm.named_parameters():
                p.requires_grad = "lora_" in name
            for p in self.vision.parameters():
                p.requires_grad = False

    def _text_ids(self, texts: list[str], device) -> torch.Tensor:
        n = self.cfg.max_text_tokens
        if self.tokenizer is not None:
            enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=n, return_tensors="pt")
            return enc["input_ids"].to(device)
        vocab = self.lm.config.vocab_size
        ids = torch.zeros(len(texts), n, dtype=torch.long)
        for i, t in enumerate(texts):
            toks = hash_tokens(t, vocab)[:n]
            ids[i, : len(toks)] = torch.tensor(toks)
        return ids.to(device)

    def logits(self, batch: dict) -> torch.Tensor:
        """(1, B, bins), shaped like the native ensemble's output."""
        state = batch["state"]
        device = state.device
        parts = []
        for cam in self.cfg.cameras:
            patches = self.vision(pixel_values=batch["images"][cam] * 2 - 1).last_hidden_state
            parts.append(self.image_proj(patches))
        if self.cfg.time_input:
            from training.value.modeling_value import time_features

            if "elapsed" not in batch:
                raise ValueError("this value function reads the elapsed time: the batch has no 'elapsed'")
            state = torch.cat([state, time_features(batch["elapsed"]).to(state.dtype)], dim=-1)
        parts.append(self.state_proj(state)[:, None])
        parts.append(self.lm.get_input_embeddings()(self._text_ids(batch["texts"], device)))
        h = self.lm(inputs_embeds=torch.cat(parts, dim=1)).last_hidden_state[:, -1]
        return self.head(h)[None]

    def loss(self, batch: dict) -> torch.Tensor:
        return recap.value_loss(self.logits(batch)[0], batch["return"])

    def forward(self, batch: dict) -> torch.Tensor:
        return self.loss(batch)

    @torch.no_grad()
    def value(self, batch: dict) -> torch.Tensor:
        return recap.expected_value(self.logits(batch)[0])
