"""Unit-LM presets as Hugging Face causal-LM configs built from code (never downloaded), the unit vocabulary, masks.

Vocabulary (`UnitVocab`): unit k (0 <= k < K) is token id k; three special tokens follow the units:
`<pad>` = K (padding only, never a target), `<bos>` = K + 1 (starts every utterance, never a target) and
`<eos>` = K + 2 (ends every utterance, predicted and scored). The vocabulary size is K + 3.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig, PretrainedConfig, Qwen2Config

from common.artefacts import corrupt

VOCAB_FILE = "unit_vocab.json"


@dataclass(frozen=True)
class UnitVocab:
    num_units: int

    @property
    def pad_id(self) -> int:
        return self.num_units

    @property
    def bos_id(self) -> int:
        return self.num_units + 1

    @property
    def eos_id(self) -> int:
        return self.num_units + 2

    @property
    def size(self) -> int:
        return self.num_units + 3

    def to_json(self) -> dict[str, Any]:
        return {"num_units": self.num_units, "unit_to_token": "token id = unit id (0 .. num_units-1)",
                "specials": {"<pad>": self.pad_id, "<bos>": self.bos_id, "<eos>": self.eos_id},
                "vocab_size": self.size,
                "sequence_format": "<bos> u_1 ... u_n <eos>; <bos> is context only, every later token is a target"}

    def save(self, model_dir: str | Path) -> None:
        (Path(model_dir) / VOCAB_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def load(cls, model_dir: str | Path) -> UnitVocab:
        path = Path(model_dir) / VOCAB_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing unit vocabulary (is {model_dir} a unit-LM directory?)")
        try:
            data = json.loads(path.read_text())
            vocab = cls(int(data["num_units"]))
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError: a file cut short
            raise corrupt(path, "unit vocabulary", err, f"delete {model_dir} and rerun the rule that trains it "
                          "(train_lm, `python -m lm.train`)") from err
        if data.get("specials") != vocab.to_json()["specials"]:
            raise ValueError(f"{path}: special token ids {data.get('specials')} differ from this code's layout")
        return vocab


# Presets: (config class, keyword arguments). Shapes follow the cited models; the vocabulary is always replaced.
PRESETS: dict[str, tuple[type[PretrainedConfig], dict[str, Any]]] = {
    # facebook/opt-125m: the SpidR paper's unit LM (12 layers, d 768, 12 heads, ReLU FFN 3072, learned positions).
    "opt-125m": (OPTConfig, dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
                                 word_embed_proj_dim=768, max_position_embeddings=2048, do_layer_norm_before=True,
                                 activation_function="relu", dropout=0.1, attention_dropout=0.0, layerdrop=0.0,
                                 enable_bias=True, init_std=0.02, tie_word_embeddings=True)),
    # Modern block at the same width and depth: RoPE, SwiGLU (8/3 d), RMSNorm, no biases, tied embeddings.
    "llama-125m": (LlamaConfig, dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     num_key_value_heads=12, intermediate_size=2048, max_position_embeddings=2048,
                                     rope_theta=10000.0, rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False,
                                     mlp_bias=False, initializer_range=0.02, tie_word_embeddings=True)),
    # Slam's unit LM: the Qwen2.5-0.5B shape (GQA 14/2 heads) with rope_theta lowered to 1e4, ~358M params at K=500.
    "slam-qwen2-358m": (Qwen2Config, dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                                          num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=2048,
                                          rope_theta=10000.0, rms_norm_eps=1e-6, hidden_act="silu",
                                          initializer_range=0.02, tie_word_embeddings=True, use_sliding_window=False)),
    # CPU presets: `tiny` (Llama-style, ~0.8M params) is the laptop demo's LM; `tiny-opt` the smallest OPT.
    "tiny-opt": (OPTConfig, dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=256,
                                 word_embed_proj_dim=64, max_position_embeddings=1024, do_layer_norm_before=True,
                                 activation_function="relu", dropout=0.0, attention_dropout=0.0, layerdrop=0.0,
                                 enable_bias=True, init_std=0.02, tie_word_embeddings=True)),
    "tiny": (LlamaConfig, dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                                     num_key_value_heads=4, intermediate_size=352, max_position_embeddings=1024,
                                     rope_theta=10000.0, rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False,
                                     mlp_bias=False, initializer_range=0.02, tie_word_embeddings=True)),
}


def build_config(preset: str, vocab: UnitVocab, overrides: dict[str, Any] | None = None,
                 attn_implementation: str = "sdpa") -> PretrainedConfig:
    """The HF config of `preset` for this vocabulary; `overrides` may only name fields the preset's config has."""
    if preset not in PRESETS:
        raise ValueError(f"unknown LM preset {preset!r}; choose one of {sorted(PRESETS)}")
    cls, kwargs = PRESETS[preset]
    defaults = cls()
    for key in overrides or {}:
        if key in ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id"):
            raise ValueError(f"model override {key!r} is not allowed: it is set by the unit vocabulary")
        if not hasattr(defaults, key):
            raise ValueError(f"model override {key!r} is not a field of {cls.__name__} (preset {preset!r})")
    kwargs = {**kwargs, **(overrides or {})}
    config = cls(vocab_size=vocab.size, pad_token_id=vocab.pad_id, bos_token_id=vocab.bos_id,
                 eos_token_id=vocab.eos_id, **kwargs)
    config._attn_implementation = attn_implementation
    return config


def build_model(config: PretrainedConfig, seed: int) -> torch.nn.Module:
    """A freshly initialised causal LM; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation=config._attn_implementation)


def count_parameters(model: torch.nn.Module, non_embedding: bool = False) -> int:
    """Distinct parameters (tied weights once); `non_embedding` drops token and learned-position embeddings."""
    seen: dict[int, int] = {}
    skip: set[int] = set()
    if non_embedding:
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                skip.add(id(module.weight))
    for p in model.parameters():
        if id(p) not in skip:
            seen[id(p)] = p.numel()
    return sum(seen.values())


def document_attention_mask(position_ids: torch.Tensor, attn_implementation: str) -> Any:
    """The per-utterance causal mask in the form `attn_implementation` takes: a BlockMask for flex_attention (its
    fully masked tiles are skipped and a fused kernel runs on GPU), else the dense 4D mask (exact and fastest on CPU).
    Both allow the same (query, key) pairs."""
    if attn_implementation == "flex_attention":
        return document_block_mask(position_ids)
    return document_causal_mask(position_ids, attn_implementation)


def document_block_mask(position_ids: torch.Tensor) -> Any:
    """FlexAttention BlockMask [B, 1, T, T] with the pairs `document_causal_mask` allows (documents start at 0)."""
    from torch.nn.attention.flex_attention import create_block_mask

    segment = (position_ids == 0).cumsum(dim=-1)

    def same_document_causal(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return (kv <= q) & (segment[b, q] == segment[b, kv])

    batch, length = position_ids.shape
    return create_block_mask(same_document_causal, batch, None, length, length, device=position_ids.device)


def document_causal_mask(position_ids: torch.Tensor, attn_implementation: str) -> torch.Tensor:
    """4D mask [B, 1, T, T] letting each token see only earlier tokens of its own document.

    A document starts wherever `position_ids` is 0 (the data packer resets positions at every utterance and at
    every block start). SDPA takes the boolean mask (True = attend); eager attention adds a float mask.
    """
    segment = (position_ids == 0).cumsum(dim=-1)
    length = position_ids.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        zero = torch.zeros((), dtype=torch.float32, device=position_ids.device)
        return torch.where(allowed, zero, torch.finfo(torch.float32).min)
    raise ValueError(f"document masks are built for 'sdpa' and 'eager', not {attn_implementation!r}")

