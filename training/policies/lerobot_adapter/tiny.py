"""A SmolVLM small enough for CPUs, built locally (no hub, no weights): SmolVLA builds its model
from this config and reads the instruction with this tokenizer. The demo's `--policy smolvla-tiny`
and the tests use it; a lab with a hub or a checkpoint names the real one in the recipe instead."""

from __future__ import annotations

from pathlib import Path


def tiny_smolvlm(directory: str | Path, instructions: list[str] = ()) -> Path:
    """Write a SmolVLM config, tokenizer and processor small enough for CPUs into `directory` (no hub,
    no weights: SmolVLA builds the model from the config). The vocabulary holds the words of
    `instructions` and of the advantage prompt, so the prompt's words are tokens, not <unk>."""
    import re

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor,
                              SmolVLMVideoProcessor)
    from transformers.models.llama import LlamaConfig

    d = Path(directory)
    if (d / "config.json").exists() and (d / "tokenizer.json").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)
    specials = ["<unk>", "<pad>", "<|im_start|>", "<end_of_utterance>", "<image>", "<fake_token_around_image>",
                "<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    words = sorted({w for text in [*instructions, "push pick place the a it to put in on advantage positive negative"]
                    for w in re.findall(r"\w+", text.lower())})
    chars = [chr(c) for c in range(32, 127) if chr(c) not in words]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + words + chars))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words and punctuation apart: "Advantage:" -> advantage, :
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        extra_special_tokens={"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
                              "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"})
    ip = SmolVLMImageProcessor(do_image_splitting=False, max_image_size={"longest_edge": 32}, size={"longest_edge": 32})
    SmolVLMProcessor(image_processor=ip, tokenizer=fast, video_processor=SmolVLMVideoProcessor(),
                     image_seq_len=4).save_pretrained(d)
    text = LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512)
    SmolVLMConfig(text_config=text.to_dict(), vision_config={"hidden_size": 32, "intermediate_size": 64,
                                                             "num_hidden_layers": 1, "num_attention_heads": 2,
                                                             "image_size": 32, "patch_size": 8},
                  scale_factor=1, image_token_id=vocab["<image>"]).save_pretrained(d)
    return d
