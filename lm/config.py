"""Unit-LM settings, checked without torch: training hyperparameters (`lm.train --config`) and scoring (`lm.score`)."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Literal

from common.config import ConfigError, field, load

# The architecture presets of lm/model.py (tests/test_config.py checks that the two lists agree); named here so
# that the workflow checks a preset without importing transformers.
Preset = Literal["opt-125m", "llama-125m", "slam-qwen2-358m", "tiny-opt", "tiny"]
PRESET_NAMES = typing.get_args(Preset)
NORMALISATIONS = ("mean", "sum")
MANY_EPOCHS = 20  # passes over the training blocks above which lm.train and lm.score warn (a memorised corpus)
# Attention implementations that keep utterances apart (lm.model.document_attention_mask builds their mask).
DOCUMENT_MASK_ATTENTION = ("sdpa", "eager", "flex_attention")


@dataclass(frozen=True)
class TrainConfig:
    # Defaults are the laptop demo recipe (~0.8M-parameter LM, ~0.5M tokens, 1-2 minutes on one CPU core).
    preset: Preset = "tiny"
    model: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides of the preset's HF config fields
    context_length: int = field(256, ge=1)  # tokens per packed block
    batch_size: int = field(16, ge=1)  # sequences per optimizer step, over all GPUs and accumulation steps
    micro_batch_size: int = field(16, ge=1)  # sequences per forward pass on one device (accumulation = the ratio)
    lr: float = field(2e-3, gt=0)
    min_lr: float = field(2e-4, ge=0)  # cosine floor
    warmup_steps: int = field(10, ge=0)
    weight_decay: float = field(0.1, ge=0)
    beta1: float = field(0.9, ge=0, lt=1)
    beta2: float = field(0.95, ge=0, lt=1)
    eps: float = field(1e-8, gt=0)
    grad_clip: float = field(1.0, ge=0)
    max_steps: int | None = field(120, ge=1)
    max_tokens: int | None = field(None, ge=1)  # token budget (block tokens processed); with max_steps the smaller
    max_epochs: float | None = field(None, gt=0)  # passes over the packed training blocks; the smallest budget wins
    max_time_s: float | None = field(None, gt=0)  # wall-clock budget of the training loop, summed over resumed runs
    valid_fraction: float = field(0.05, ge=0, lt=1)
    # Validation (which also picks the `best` model) and resumable checkpoints: every N steps and/or every M minutes
    # of rank 0's wall clock, whichever comes first, and always at the end. Defaults suit paper scale (a 125M LM
    # checkpoint is ~1.5 GB with its optimizer state); the demo config sets 40 / 40 steps. Validation by steps keeps
    # the choice of `best` reproducible; by minutes it depends on speed (the weights never do).
    eval_interval: int | None = field(1000, ge=1)
    eval_minutes: float | None = field(None, gt=0)
    eval_blocks: int = field(512, ge=1)  # at most this many validation blocks per evaluation
    checkpoint_interval: int | None = field(None, ge=1)
    checkpoint_minutes: float | None = field(30.0, gt=0)
    log_interval: int = field(10, ge=1)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on a bf16-capable GPU, else fp32
    # bf16 only: a step whose gradients are NaN/Inf is skipped (no update), as the official SpidR code's GradScaler
    # does; the run stops after more than this many consecutive skips. fp32 stops at the first NaN/Inf.
    skip_nonfinite_steps: int = field(10, ge=0)
    compile: bool = False
    # sdpa (CPU default: a dense per-utterance mask, exact), eager, or flex_attention (a block-sparse per-utterance
    # mask that keeps a fused kernel on GPU; CPU runs it forward only). Others need cross_document_attention.
    attn_implementation: str = "sdpa"
    cross_document_attention: bool = False  # True: separators only, plain causal attention (faster on GPU)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "") -> TrainConfig:
        """Through the typed loader; `where` is the key path of `raw` in error messages (e.g. lms.tiny.train)."""
        for budget in ("max_tokens", "max_epochs"):
            if isinstance(raw, dict) and budget in raw and "max_steps" not in raw:
                raise ConfigError(f"{where or 'config'}: sets '{budget}' but not 'max_steps', whose demo default "
                                  "(120) would cap it; set 'max_steps' too (null: no step limit)")
        return load(cls, raw, where)

    def __post_init__(self) -> None:
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(f"'batch_size' ({self.batch_size}) must be a multiple of 'micro_batch_size' "
                              f"({self.micro_batch_size})")
        if self.max_steps is None and self.max_tokens is None and self.max_epochs is None:
            raise ConfigError("needs 'max_steps', 'max_tokens' or 'max_epochs' (they set the cosine schedule's "
                              "length); 'max_time_s' may be added as a further stop")
        if not self.cross_document_attention and self.attn_implementation not in DOCUMENT_MASK_ATTENTION:
            raise ConfigError(f"'attn_implementation' {self.attn_implementation!r}: per-utterance attention "
                              f"masks are built for {', '.join(DOCUMENT_MASK_ATTENTION)}; set "
                              "cross_document_attention for others")
        if not self.min_lr <= self.lr:
            raise ConfigError(f"'min_lr' ({self.min_lr}) must be in [0, lr={self.lr}]")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def budgets(self, train_blocks: int | None = None) -> dict[str, int]:
        """Optimizer steps allowed by each configured budget; `max_epochs` needs the packed corpus's block count."""
        out = {}
        if self.max_steps is not None:
            out["max_steps"] = self.max_steps
        if self.max_tokens is not None:
            out["max_tokens"] = math.ceil(self.max_tokens / (self.batch_size * self.context_length))
        if self.max_epochs is not None:
            if train_blocks is None:
                raise ValueError("'max_epochs' is resolved against the packed corpus: pass its number of blocks")
            out["max_epochs"] = max(1, math.ceil(self.max_epochs * train_blocks / self.batch_size))
        return out

    def total_steps(self, train_blocks: int | None = None) -> int:
        """The run's length in optimizer steps (the cosine schedule's too): the smallest budget."""
        return min(self.budgets(train_blocks).values())


def batch_layout(cfg: TrainConfig, world: int, where: str = "") -> str:
    """How `world` processes reach cfg.batch_size, as lm.train will run it ("W process(es) x A accumulation x M
    sequences = B sequences per step"); a ConfigError naming the keys and the sizes that work when none does."""
    if world < 1:
        raise ConfigError(f"world size {world}: expected at least 1 process")
    per_round = cfg.micro_batch_size * world
    if cfg.batch_size % per_round:
        key = f"{where}." if where else ""
        worlds = [w for w in range(1, cfg.batch_size // cfg.micro_batch_size + 1)
                  if cfg.batch_size % (cfg.micro_batch_size * w) == 0]
        micros = [m for m in range(1, cfg.batch_size // world + 1) if cfg.batch_size % (m * world) == 0]
        raise ConfigError(
            f"'{key}batch_size' ({cfg.batch_size}) cannot be reached on world size {world} with "
            f"'{key}micro_batch_size' {cfg.micro_batch_size}: it must be a multiple of micro_batch_size x world size "
            f"= {per_round}. World sizes that reach it: {worlds}; or, on {world} process(es), micro_batch_size in "
            f"{micros or 'none (batch_size < world size)'}")
    accumulation = cfg.batch_size // per_round
    tokens = cfg.batch_size * cfg.context_length
    return (f"{world} process(es) x {accumulation} accumulation x {cfg.micro_batch_size} sequences = "
            f"{cfg.batch_size} sequences ({tokens} tokens) per step")


@dataclass(frozen=True)
class ScoreConfig:
    """How `lm.score` turns a unit sequence into one number (the `--config` JSON); recorded beside the scores."""

    normalisation: Literal["mean", "sum"] = "mean"  # log-likelihood per scored token, or the total
    eos: bool = True  # append <eos> and score it
    model: Literal["best", "last"] = "best"  # the lowest-validation-loss weights (MODEL_DIR) or the final (/last)
