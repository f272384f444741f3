"""Configuration of SpidR / DinoSR pretraining: frozen dataclasses, presets, and JSON overrides.

A run is described by one JSON object, e.g. ``{"kind": "spidr", "preset": "small", "max_steps": 600,
"optim": {"lr": 1e-3}}``. ``kind`` and ``preset`` pick the defaults (`PRESETS`), every other key overrides one
field (nested blocks: ``model``, ``ema``, ``optim``, ``mask``, ``data``). Unknown keys are rejected by name.

Step-based schedule lengths (warmup / hold / decay, EMA timescale, CNN freeze step) are derived from
``max_steps`` with the paper's proportions unless given explicitly, so ``base`` at 400k steps is exactly the paper
recipe (12k / 188k / 200k, timescale 20k, freeze 200k) and a 500-step demo keeps the same shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from common.config import ConfigError, field, load, to_jsonable
from data.audio import SAMPLE_RATE
from spidr.schedules import (
    PAPER_EMA_START_DECAY,
    PAPER_EMA_TIMESCALE,
    PAPER_PHASES,
    PAPER_STEPS,
    ema_movement,
    scaled_ema,
)

__all__ = ["ConfigError", "to_jsonable"]  # re-exported: checkpoints and the trainer import them from here

KINDS = ("spidr", "dinosr")
# (channels, kernel, stride) of the 7 conv layers: 320-sample hop (50 Hz), 400-sample receptive field.
PAPER_CONV_LAYERS: tuple[tuple[int, int, int], ...] = ((512, 10, 5),) + ((512, 3, 2),) * 4 + ((512, 2, 2),) * 2


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. fairseq / official SpidR names in comments."""

    conv_layers: tuple[tuple[int, int, int], ...] = PAPER_CONV_LAYERS  # conv_layer_config
    conv_bias: bool = False  # conv_bias
    # extractor_mode: "layer_norm" (SpidR: LayerNorm after every conv) or "group_norm" (wav2vec 2.0 / HuBERT base:
    # GroupNorm on the first conv only, so loudness survives the front end)
    extractor_mode: Literal["layer_norm", "group_norm"] = "layer_norm"
    embed_dim: int = field(768, ge=1)  # encoder_embed_dim
    num_layers: int = field(12, ge=1)  # encoder_layers
    num_heads: int = field(12, ge=1)  # encoder_attention_heads
    ffn_dim: int = field(3072, ge=1)  # encoder_ffn_embed_dim
    qkv_bias: bool = False  # encoder_qkv_bias (fairseq always had a bias; DinoSR original: True)
    # conv_pos: total span, split over pos_conv_depth convs of max(3, k // depth)
    pos_conv_kernel: int = field(95, ge=1)
    pos_conv_groups: int = field(16, ge=1)  # conv_pos_groups
    pos_conv_depth: int = field(5, ge=1)  # pos_conv_depth
    dropout: float = field(0.1, ge=0, lt=1)  # dropout (after attention, after FFN, after the pos-conv sum)
    attention_dropout: float = field(0.1, ge=0, lt=1)  # attention_dropout
    ffn_dropout: float = field(0.0, ge=0, lt=1)  # activation_dropout
    projection_dropout: float = field(0.0, ge=0, lt=1)  # dropout_input
    layer_drop: float = field(0.0, ge=0, lt=1)  # encoder_layerdrop (SpidR 0, DinoSR 0.05)
    num_codebooks: int = field(8, ge=1)  # average_top_k_layers: codebooks on the last K layers
    codebook_size: int = field(256, ge=2)  # codebook_size
    codebook_decay: float = field(0.9, ge=0, le=1)  # codebook_decay
    # Optimiser steps whose codebook statistics are summed before one EMA update (1 = every step, the paper); each
    # step's statistics already sum all its micro-batches and processes (the whole global batch).
    # Online k-means needs many targets per update: the paper's ~100k masked frames per step keep ~200 of 256
    # codewords alive, while a CPU batch of ~160 frames collapses the codebooks to a handful within 50 steps.
    codebook_update_interval: int = field(1, ge=1)
    # The official code re-draws the teacher's Linear weights at init ("reinit"); DinoSR/fairseq copy the student.
    teacher_init: Literal["reinit", "copy"] = "reinit"

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"model.embed_dim={self.embed_dim} is not divisible by model.num_heads={self.num_heads}")
        if self.embed_dim % self.pos_conv_groups:
            raise ConfigError(
                f"model.embed_dim={self.embed_dim} is not divisible by model.pos_conv_groups={self.pos_conv_groups}"
            )
        if not 1 <= self.num_codebooks <= self.num_layers:
            raise ConfigError(f"model.num_codebooks={self.num_codebooks} must be in 1..num_layers={self.num_layers}")
        if not self.conv_layers or any(len(c) != 3 for c in self.conv_layers):
            raise ConfigError("model.conv_layers must be a non-empty list of [channels, kernel, stride]")

    @property
    def codebook_layers(self) -> list[int]:
        """1-based transformer layers whose teacher outputs are clustered (the last `num_codebooks`)."""
        return list(range(self.num_layers - self.num_codebooks + 1, self.num_layers + 1))


@dataclass(frozen=True)
class EmaConfig:
    """Teacher EMA schedule. SpidR: exponential; DinoSR: linear then constant, frozen at the freeze step."""

    schedule: Literal["exponential", "linear"] = "exponential"
    # How unset start_decay / timescale follow max_steps. proportional: start 0.999, timescale 0.05 * max_steps
    # (the paper's at 400k; a short run's teacher then moves as fast as its student). movement: both from
    # spidr.schedules.scaled_ema, which holds the teacher's total movement sum (1 - decay) near the paper's 20.
    scaling: Literal["proportional", "movement"] = "proportional"
    start_decay: float | None = field(None, ge=0, le=1)  # ema_decay; None: from `scaling` (0.999 at 400k)
    timescale: float | None = field(None, gt=0)  # exponential; None: from `scaling` (20k at 400k)
    threshold: float = field(1e-7, ge=0)  # exponential: decay becomes 1 (teacher frozen) once 1 - decay <= threshold
    final_decay: float = field(0.9999, ge=0, le=1)  # linear: ema_end_decay
    final_step: int | None = field(None, ge=0)  # linear: ema_anneal_end_step; None = 0.075 * max_steps (30k at 400k)

    def __post_init__(self) -> None:
        if self.scaling == "movement" and self.schedule != "exponential":
            raise ConfigError("ema.scaling='movement' scales SpidR's exponential schedule; with ema.schedule="
                              f"{self.schedule!r} use ema.scaling='proportional'")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW + tri-stage learning rate (fairseq tri_stage, phase ratios 0.03 / 0.47 / 0.50)."""

    lr: float = field(5e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = field(1e-6, gt=0)
    weight_decay: float = field(0.01, ge=0)
    clip_norm: float = field(10.0, ge=0)  # 0 disables clipping
    warmup_steps: int | None = field(None, ge=0)  # None = 0.03 * max_steps
    hold_steps: int | None = field(None, ge=0)  # None = 0.47 * max_steps
    decay_steps: int | None = field(None, ge=0)  # None = 0.50 * max_steps
    init_lr_scale: float = field(0.01, ge=0)
    final_lr_scale: float = field(0.01, ge=0)
    # bf16 only: a step whose gradients are NaN/Inf is skipped (no update), as the official code's GradScaler does;
    # the run stops after more than this many consecutive skips. fp32 stops at the first NaN/Inf.
    skip_nonfinite_steps: int = field(10, ge=0)


@dataclass(frozen=True)
class MaskConfig:
    """Span masking of the student input (fairseq mask_prob / mask_length / static / overlap allowed)."""

    prob: float = field(0.8, ge=0, le=1)
    length: int = field(10, ge=1)
    min_masks: int = field(2, ge=0)


@dataclass(frozen=True)
class DataConfig:
    """Length-bucketed batches, every item randomly cropped to the batch's shortest one (no padding).

    One optimiser step trains on `global_batch_samples` (the recipe: the paper's 16 GPUs x 3.8M samples, about
    63 min of audio), as world size x accumulation micro-batches of `batch_samples` each (a memory knob): the
    trainer derives the accumulation from the number of processes (`batch_plan`), so 1, 8 or 16 GPUs train the
    same model. A world size that cannot reach the global batch exactly is an error unless `inexact_global_batch`.
    """

    global_batch_samples: int = field(60_800_000, ge=1)  # per optimiser step, summed over processes and micro-batches
    batch_samples: int = field(3_800_000, ge=1)  # per micro-batch on one process (GPU): the paper's max_tokens
    inexact_global_batch: bool = False  # train at the nearest reachable global batch (recorded) instead of refusing
    min_samples: int = field(2_000, ge=1)  # shorter utterances are dropped
    max_samples: int = field(320_000, ge=1)  # longer ones are randomly cropped to this
    num_buckets: int = field(1000, ge=1)
    num_workers: int = field(8, ge=0)
    standardize: bool = True  # per-utterance zero mean / unit variance (always on in the paper)

    def __post_init__(self) -> None:
        if self.global_batch_samples % self.batch_samples and not self.inexact_global_batch:
            raise ConfigError(
                f"data.global_batch_samples={self.global_batch_samples} is not a multiple of "
                f"data.batch_samples={self.batch_samples}, so no number of processes reaches it exactly; change one "
                "of them, or set data.inexact_global_batch: true to train at the nearest reachable global batch"
            )


@dataclass(frozen=True)
class BatchPlan:
    """One optimiser step: `world` processes x `accumulation` micro-batches x `batch_samples` (a greedy budget)."""

    world: int
    accumulation: int
    batch_samples: int
    global_batch_samples: int  # what the recipe asks for

    @property
    def micro_batches(self) -> int:
        """Micro-batches per optimiser step, over all processes."""
        return self.world * self.accumulation

    @property
    def effective_batch_samples(self) -> int:
        return self.micro_batches * self.batch_samples

    @property
    def exact(self) -> bool:
        return self.effective_batch_samples == self.global_batch_samples

    def describe(self) -> str:
        """E.g. '16 process(es) x 1 accumulation x 3800000 samples = 60800000 samples (63.3 min of audio) per step'."""
        line = (f"{self.world} process(es) x {self.accumulation} accumulation x {self.batch_samples} samples = "
                f"{self.effective_batch_samples} samples ({self.effective_batch_samples / SAMPLE_RATE / 60:.1f} min "
                "of audio) per step")
        if not self.exact:
            line += f", NOT data.global_batch_samples={self.global_batch_samples} (data.inexact_global_batch)"
        return line

    def to_dict(self) -> dict[str, Any]:
        """What logs and checkpoints record."""
        return {"world_size": self.world, "accumulation": self.accumulation, "batch_samples": self.batch_samples,
                "effective_batch_samples": self.effective_batch_samples,
                "global_batch_samples": self.global_batch_samples, "exact": self.exact}


def batch_plan(data: DataConfig, world: int) -> BatchPlan:
    """The gradient accumulation that makes `world` processes reach data.global_batch_samples.

    A ConfigError naming the keys and the world sizes that work when none reaches it exactly, unless
    data.inexact_global_batch (then the nearest accumulation, at least 1).
    """
    if world < 1:
        raise ConfigError(f"world size {world}: expected at least 1 process")
    per_round = world * data.batch_samples
    accumulation, rest = divmod(data.global_batch_samples, per_round)
    if rest or accumulation == 0:
        nearest = max(1, round(data.global_batch_samples / per_round))
        if not data.inexact_global_batch:
            micro = data.global_batch_samples // data.batch_samples
            worlds = [w for w in range(1, micro + 1) if micro % w == 0]
            raise ConfigError(
                f"data.global_batch_samples={data.global_batch_samples} cannot be reached exactly on world size "
                f"{world} with data.batch_samples={data.batch_samples} per process: it must be a multiple of world "
                f"size x data.batch_samples = {per_round}. World sizes that reach it: {worlds}; or change "
                f"data.batch_samples, or set data.inexact_global_batch: true to train at "
                f"{nearest * per_round} samples per step"
            )
        accumulation = nearest
    return BatchPlan(world, accumulation, data.batch_samples, data.global_batch_samples)


@dataclass(frozen=True)
class TrainConfig:
    """Everything a pretraining run depends on; `to_dict()` is what checkpoints and provenance record."""

    kind: Literal["spidr", "dinosr"] = "spidr"
    preset: str = "base"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    ema: EmaConfig = dataclasses.field(default_factory=EmaConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mask: MaskConfig = dataclasses.field(default_factory=MaskConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    max_steps: int = field(400_000, ge=1)
    # CNN + projection frozen after this many updates; None = 0.5 * max_steps
    freeze_step: int | None = field(None, ge=0)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    log_interval: int = field(200, ge=1)
    checkpoint_interval: int = field(2_500, ge=1)
    keep_checkpoints: int = field(2, ge=1)
    valid_interval: int | None = field(None, ge=1)  # None: validate at every checkpoint (with a valid manifest)
    # Learning curves: every this many steps (and at the first and last), the teacher's and heads' codebook
    # diagnostics on a dev set with phone labels (perplexity, active codewords, PNMI), in metrics.jsonl. The probe
    # is eval's (PNMI), so such a run goes through `python -m eval.curves train`, which the workflow does.
    curve_interval: int | None = field(None, ge=1)
    progress: bool = True


    # Resolved step counts (explicit values win, otherwise the paper's proportions of max_steps).
    @property
    def warmup_steps(self) -> int:
        return _steps(self.optim.warmup_steps, PAPER_PHASES["warmup"], self.max_steps)

    @property
    def hold_steps(self) -> int:
        return _steps(self.optim.hold_steps, PAPER_PHASES["hold"], self.max_steps)

    @property
    def decay_steps(self) -> int:
        return _steps(self.optim.decay_steps, PAPER_PHASES["decay"], self.max_steps)

    @property
    def ema_start_decay(self) -> float:
        if self.ema.start_decay is not None:
            return float(self.ema.start_decay)
        return scaled_ema(self.max_steps)[0] if self.ema.scaling == "movement" else PAPER_EMA_START_DECAY

    @property
    def ema_timescale(self) -> float:
        if self.ema.timescale is not None:
            return float(self.ema.timescale)
        if self.ema.scaling == "movement":
            return scaled_ema(self.max_steps)[1]
        return PAPER_EMA_TIMESCALE / PAPER_STEPS * self.max_steps

    @property
    def ema_final_step(self) -> int:
        return _steps(self.ema.final_step, 0.075, self.max_steps)

    @property
    def freeze_at(self) -> int:
        return _steps(self.freeze_step, PAPER_PHASES["freeze"], self.max_steps)

    def schedule(self) -> dict[str, Any]:
        """The resolved step schedules (what unset keys became), recorded in the workdir and the final checkpoint."""
        out = {"max_steps": self.max_steps, "warmup_steps": self.warmup_steps, "hold_steps": self.hold_steps,
               "decay_steps": self.decay_steps, "freeze_step": self.freeze_at, "ema_schedule": self.ema.schedule,
               "ema_scaling": self.ema.scaling, "ema_start_decay": self.ema_start_decay}
        if self.ema.schedule == "exponential":
            out.update(ema_timescale=self.ema_timescale, ema_threshold=self.ema.threshold, ema_movement=ema_movement(
                self.max_steps, start_decay=self.ema_start_decay, timescale=self.ema_timescale,
                threshold=self.ema.threshold))
        else:
            out.update(ema_final_decay=self.ema.final_decay, ema_final_step=self.ema_final_step)
        return out

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))

    def recipe_dict(self) -> dict[str, Any]:
        """The fields that change the trained weights (resume refuses a workdir trained with other values)."""
        d = self.to_dict()
        for key in ("device", "log_interval", "checkpoint_interval", "keep_checkpoints", "valid_interval", "progress",
                    "curve_interval"):
            d.pop(key)
        d["data"].pop("num_workers")
        d["optim"].pop("skip_nonfinite_steps")
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None, where: str = "") -> TrainConfig:
        """Resolve a JSON config: preset(kind) defaults, then every override; `where` prefixes key paths in errors.

        A resolved config (what the workflow passes, `common.config.dumps` of a TrainConfig) loads back unchanged.
        """
        values = dict(values or {})
        kind = values.get("kind", "spidr")
        name = values.get("preset", "base")
        if not isinstance(kind, str) or not isinstance(name, str):
            raise ConfigError(f"{where or 'config'}: 'kind' and 'preset' must be strings")
        try:
            base = preset(name, kind)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}" if where else str(err)) from None
        return load(cls, values, where, base=base)


def _steps(value: int | None, ratio: float, max_steps: int) -> int:
    return int(value) if value is not None else round(ratio * max_steps)


# ---------------------------------------------------------------------------------------------------------------
# Presets

# Default max_steps per preset (the schedules scale with it).
PRESET_STEPS = {"base": 400_000, "medium": 8_000, "small": 600, "tiny": 8}


def preset(name: str, kind: str = "spidr") -> TrainConfig:
    """The defaults for a preset and model kind, before overrides."""
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r}; expected one of {KINDS}")
    if name not in PRESET_STEPS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {sorted(PRESET_STEPS)}")
    model = ModelConfig()
    ema = EmaConfig()
    if kind == "dinosr":  # the paper's "DinoSR reproduced": linear EMA, LayerDrop 0.05, no qkv bias
        model = dataclasses.replace(model, layer_drop=0.05)
        ema = dataclasses.replace(ema, schedule="linear")
    cfg = TrainConfig(kind=kind, preset=name, model=model, ema=ema, max_steps=PRESET_STEPS[name])
    if name == "base":
        return cfg
    if name == "medium":
        # One GPU, minutes (configs/gpu_quick.yaml): the paper's front end and per-GPU batch (3.8M samples, 237.5 s
        # of audio, ~7k masked frames per codebook update), an 8 x 512 transformer with codebooks on layers 3..8,
        # and the recipe scaled to 8k steps with the EMA's total movement held near the paper's
        # (spidr.schedules.scaled_recipe; ema.scaling 'movement').
        model = dataclasses.replace(model, embed_dim=512, num_layers=8, num_heads=8, ffn_dim=2048, num_codebooks=6)
        return dataclasses.replace(
            cfg, model=model, ema=dataclasses.replace(ema, scaling="movement"),
            data=dataclasses.replace(cfg.data, global_batch_samples=3_800_000, batch_samples=3_800_000),
            log_interval=100, checkpoint_interval=1_000,
        )
    if name == "small":
        # CPU demo: about 3 min on 2 idle cores for the 0.34 h demo corpus (600 steps of <= 8 s, ~10 epochs).
        # Narrow CNN, 8 x 256 transformer, codebooks on layers 3..8 (the paper's unit layer 6 has a head).
        # The recipe is the paper's, scaled to max_steps (lr 5e-4; higher rates stall or collapse at this size).
        small_conv = ((128, 10, 5),) + ((128, 3, 2),) * 4 + ((128, 2, 2),) * 2
        model = dataclasses.replace(
            model, conv_layers=small_conv, embed_dim=256, num_layers=8, num_heads=4, ffn_dim=1024,
            pos_conv_kernel=95, pos_conv_groups=16, pos_conv_depth=5, num_codebooks=6, codebook_size=256,
            dropout=0.0, attention_dropout=0.0,
        )
        return dataclasses.replace(
            cfg, model=model,
            data=dataclasses.replace(cfg.data, global_batch_samples=SAMPLE_RATE * 8, batch_samples=SAMPLE_RATE * 8,
                                     num_workers=0),
            log_interval=25, checkpoint_interval=100,
        )
    # tiny: unit tests (a few steps in well under a second each).
    tiny_conv = ((16, 10, 5),) + ((16, 3, 2),) * 4 + ((16, 2, 2),) * 2
    model = dataclasses.replace(
        model, conv_layers=tiny_conv, embed_dim=32, num_layers=4, num_heads=2, ffn_dim=64,
        pos_conv_kernel=16, pos_conv_groups=4, pos_conv_depth=2, num_codebooks=3, codebook_size=16,
    )
    return dataclasses.replace(
        cfg, model=model, ema=dataclasses.replace(ema, start_decay=0.9),
        data=dataclasses.replace(cfg.data, global_batch_samples=SAMPLE_RATE * 4, batch_samples=SAMPLE_RATE * 4,
                                 num_workers=0),
        log_interval=1, checkpoint_interval=2, progress=False,
    )


# ---------------------------------------------------------------------------------------------------------------
# JSON overrides (through the one typed loader, common.config)


def model_config_from_dict(values: dict[str, Any]) -> ModelConfig:
    """A ModelConfig from its recorded dict (checkpoints), unknown keys rejected."""
    return load(ModelConfig, values, "model")
