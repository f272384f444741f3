"""What the units stage is asked to do, checked without torch: encoder specs, layers, quantizers, run options.

Layer numbering, one convention per encoder family (a recurring source of bugs elsewhere, so it is tested):
- `spidr` / `dinosr`: layers 1..num_layers; layer L is the FFN output *before the residual* of transformer
  block L (the official `get_intermediate_outputs(wav)[L - 1]`). Codebook units exist only for the layers with a
  prediction head (`codebook_layers`, the last 8 of 12 in the paper's base model).
- `hf`: layers 0..num_layers, exactly `model(wav, output_hidden_states=True).hidden_states[L]` of transformers 5:
  0 = the pre-transformer embeddings (feature projection + positional conv, the input of block 1), L >= 1 = the
  output of block L (residual stream). For pre-LN ("stable layer norm") models, L = num_layers is the output of
  the last block *before* the final LayerNorm (transformers 5; transformers 4 applied the final LayerNorm there).
- `mfcc`: one "layer", 0: 13 MFCCs + deltas + delta-deltas (39 dims).
All encoders give 50 Hz frames: frame i covers samples [320 i, 320 i + 400), so an utterance of N samples has
(N - 400) // 320 + 1 frames, and frame i is centred at 0.01 + 0.02 i s (the ABX convention).

The workflow imports this module when it parses the config, so it must not import torch (numpy is fine).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from common.config import ConfigError, load, loads
from common.config import field as cfg_field
from data.audio import HOP, SAMPLE_RATE, WINDOW, conv_geometry, frame_count  # noqa: F401  (re-exported)

ENCODER_KINDS = ("spidr", "dinosr", "hf", "mfcc")
QUANTIZERS = ("codebook", "kmeans")
PRECISIONS = ("auto", "fp32", "bf16")
BAD_AUDIO_POLICIES = ("fail", "skip")
FRAME_RATE = SAMPLE_RATE / HOP  # 50.0 Hz


class EncoderConfigError(ValueError):
    """An encoder spec, layer or quantizer that cannot work together; the message names the value."""


# ---------------------------------------------------------------------------------------------------------------
# Specs and validation (pure: the workflow calls these before anything runs)


@dataclass(frozen=True)
class EncoderSpec:
    """What encoder to use: {"kind": spidr|dinosr|hf|mfcc, "checkpoint": path (spidr/dinosr), "model": HF name or
    local directory (hf), "normalize": bool (hf only; default: the model's preprocessor config)}."""

    kind: str
    checkpoint: str | None = None
    model: str | None = None
    normalize: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in ENCODER_KINDS:
            raise EncoderConfigError(f"encoder kind={self.kind!r}; expected one of {ENCODER_KINDS}")
        needs = {"spidr": "checkpoint", "dinosr": "checkpoint", "hf": "model", "mfcc": None}[self.kind]
        for key in ("checkpoint", "model"):
            value = getattr(self, key)
            if key == needs and not (isinstance(value, str) and value):
                raise EncoderConfigError(f"encoder kind={self.kind!r} needs {key!r} (a non-empty string)")
            if key != needs and value is not None:
                raise EncoderConfigError(f"encoder kind={self.kind!r} takes no {key!r} (got {value!r})")
        if self.normalize is not None and (self.kind != "hf" or not isinstance(self.normalize, bool)):
            raise EncoderConfigError(f"'normalize' (true/false) is only for kind='hf'; got {self.normalize!r}")

    @classmethod
    def parse(cls, spec: str | Mapping[str, Any] | EncoderSpec) -> EncoderSpec:
        """From a JSON string or a dict, through the typed loader: unknown keys and wrong types are named."""
        if isinstance(spec, EncoderSpec):
            return spec
        try:
            return loads(cls, spec, "encoder spec") if isinstance(spec, str) else load(cls, spec, "encoder")
        except ConfigError as err:
            raise EncoderConfigError(str(err)) from None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("kind", self.kind), ("checkpoint", self.checkpoint), ("model", self.model),
                                  ("normalize", self.normalize)) if v is not None}


def layer_range(kind: str, num_layers: int) -> range:
    """The valid layers of an encoder family (see the module docstring)."""
    if kind in ("spidr", "dinosr"):
        return range(1, num_layers + 1)
    if kind == "hf":
        return range(0, num_layers + 1)
    return range(0, 1)


def validate_units_request(kind: str, layer: int, quantizer: str | None = None, *, num_layers: int | None = None,
                           codebook_layers: Sequence[int] | None = None) -> None:
    """Raise EncoderConfigError if (encoder kind, layer, quantizer) cannot work, naming the offending value.

    `quantizer` None means continuous features. `num_layers` / `codebook_layers` are the encoder's (for a
    SpidR model still to be pretrained, from its training config); None skips the checks that need them.
    """
    if kind not in ENCODER_KINDS:
        raise EncoderConfigError(f"encoder kind={kind!r}; expected one of {ENCODER_KINDS}")
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
        raise EncoderConfigError(f"layer={layer!r} must be an integer")
    if quantizer is not None and quantizer not in QUANTIZERS:
        raise EncoderConfigError(f"quantizer={quantizer!r}; expected one of {QUANTIZERS}")
    if kind == "mfcc" and layer != 0:
        raise EncoderConfigError(f"layer={layer} for an MFCC encoder; MFCC has one layer, 0")
    if kind in ("spidr", "dinosr") and layer < 1:
        raise EncoderConfigError(f"layer={layer} for a {kind} encoder; its layers are 1-based (1..num_layers)")
    if kind == "hf" and layer < 0:
        raise EncoderConfigError(f"layer={layer} for an HF encoder; hidden_states layers are 0..num_layers")
    if num_layers is not None and layer not in layer_range(kind, num_layers):
        bounds = layer_range(kind, num_layers)
        raise EncoderConfigError(
            f"layer={layer} is beyond this {kind} encoder's depth: valid layers are {bounds.start}..{bounds.stop - 1}"
        )
    if quantizer == "codebook":
        if kind not in ("spidr", "dinosr"):
            raise EncoderConfigError(
                f"quantizer='codebook' needs a SpidR/DinoSR codebook head; a {kind!r} encoder has none (use 'kmeans')"
            )
        if codebook_layers is not None and layer not in codebook_layers:
            raise EncoderConfigError(
                f"quantizer='codebook' at layer={layer}: this encoder has codebook heads only on layers "
                f"{sorted(codebook_layers)}"
            )


# ---------------------------------------------------------------------------------------------------------------
# Run options: compute layout (device, batching, sharding) plus the few settings that change results


class _Geometry(Protocol):
    """What the run options need to know of an encoder (units.encoders.Encoder has it)."""

    hop: int
    window: int
    bf16: bool
    device: Any  # a torch.device: its `.type` is read

    @property
    def frame_rate(self) -> float: ...

    def frame_count(self, num_samples: int) -> int: ...


@dataclass(frozen=True)
class RunOptions:
    """How to run an encoder over a corpus. Only `precision`, the chunking and `bad_audio` can change results
    (`result_settings`); batching and sharding cannot (batched == one at a time)."""

    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    batch_seconds: float | None = None  # padded audio per batch (longest piece x size); None: 400 s CUDA, 60 s CPU
    max_batch: int = 256
    chunk_seconds: float = 40.0  # longer utterances are encoded in chunks of this many seconds of core frames
    context_seconds: float = 5.0  # of context each side of a chunk
    shard_hours: float = 0.5  # audio per shard: the unit of resumption and of length bucketing
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))  # audio decoding threads
    bad_audio: str = "fail"  # fail | skip (logged, counted and recorded)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.bad_audio not in BAD_AUDIO_POLICIES:
            raise EncoderConfigError(f"bad_audio={self.bad_audio!r}; expected one of {BAD_AUDIO_POLICIES}")
        if self.precision not in PRECISIONS:
            raise EncoderConfigError(f"precision={self.precision!r}; expected one of {PRECISIONS}")
        for name in ("batch_seconds", "chunk_seconds", "shard_hours"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise EncoderConfigError(f"{name}={getattr(self, name)} must be > 0")
        if self.context_seconds < 0 or self.max_batch < 1:
            raise EncoderConfigError("context_seconds must be >= 0 and max_batch >= 1")

    @property
    def shard_samples(self) -> int:
        return int(self.shard_hours * 3600 * SAMPLE_RATE)

    def batching(self, encoder: _Geometry) -> dict[str, Any]:
        """Keyword arguments of `units.batching.encode_batched` for this encoder."""
        return {
            "frame_count_fn": encoder.frame_count, "hop": encoder.hop, "window": encoder.window,
            "chunk_frames": max(1, round(self.chunk_seconds * encoder.frame_rate)),
            "context_frames": round(self.context_seconds * encoder.frame_rate),
            "batch_samples": int(self.batch_seconds_for(encoder) * SAMPLE_RATE), "max_batch": self.max_batch,
        }

    def batch_seconds_for(self, encoder: _Geometry) -> float:
        if self.batch_seconds is not None:
            return self.batch_seconds
        return 400.0 if encoder.device.type == "cuda" else 60.0

    def result_settings(self, encoder: _Geometry) -> dict[str, Any]:
        return {"precision": "bf16" if encoder.bf16 and encoder.device.type == "cuda" else "fp32",
                "chunk_seconds": self.chunk_seconds, "context_seconds": self.context_seconds,
                "bad_audio": self.bad_audio}


def add_run_options(parser) -> None:
    """The run options as argparse flags (shared by units.extract and units.kmeans)."""
    d = RunOptions()
    g = parser.add_argument_group("run options")
    g.add_argument("--device", default=d.device, help="auto | cpu | cuda[:i]")
    g.add_argument("--precision", default=d.precision, choices=list(PRECISIONS))
    g.add_argument("--batch-seconds", type=float, default=d.batch_seconds,
                   help="padded audio per batch (default: 400 on CUDA, 60 on CPU)")
    g.add_argument("--max-batch", type=int, default=d.max_batch)
    g.add_argument("--chunk-seconds", type=float, default=d.chunk_seconds)
    g.add_argument("--context-seconds", type=float, default=d.context_seconds)
    g.add_argument("--shard-hours", type=float, default=d.shard_hours)
    g.add_argument("--workers", type=int, default=d.workers)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_options_from_args(args, extraction: ExtractionConfig | None = None) -> RunOptions:
    """The run flags, plus `bad_audio` from the job's `--config` (it changes the result, so it is no flag)."""
    return RunOptions(
        device=args.device, precision=args.precision, batch_seconds=args.batch_seconds, max_batch=args.max_batch,
        chunk_seconds=args.chunk_seconds, context_seconds=args.context_seconds, shard_hours=args.shard_hours,
        workers=args.workers, bad_audio=(extraction or ExtractionConfig()).bad_audio, progress=not args.no_progress,
    )


# ---------------------------------------------------------------------------------------------------------------
# The units job configs: what `units.kmeans fit`, `units.extract` and `units.dedup` take as `--config` JSON, and
# what the workflow checks for every `units.<name>` entry (through common.config.load).


@dataclass(frozen=True)
class ExtractionConfig:
    """Settings of extraction that change its result (compute layout stays in RunOptions' flags)."""

    bad_audio: Literal["fail", "skip"] = "fail"  # skip: logged, counted and recorded in the output


@dataclass(frozen=True)
class ShardingConfig:
    """How many extraction jobs a dataset is split into (config.yaml's `extraction.shards`). Compute layout only:
    it is kept out of every job's `--config`, and the gathered units do not depend on it."""

    shards: int = cfg_field(2, ge=1)  # shards per training corpus (units.shards.split_rows), one job each
    # Shards per benchmark set: evaluation sets are hours, not thousands of hours, so one job each by default.
    benchmark_shards: int = cfg_field(1, ge=1)


@dataclass(frozen=True)
class KMeansFitConfig:
    """How k-means is fit: a seeded sample of at most `max_frames` frames of `corpus`, `niter` Lloyd iterations."""

    corpus: str | None = None  # the workflow's corpus name (the manifest itself is a path argument)
    seed: int = 0
    max_frames: int = cfg_field(200_000, ge=1)
    niter: int = cfg_field(50, ge=1)


@dataclass(frozen=True)
class UnitsConfig:
    """One units config: an encoder, a layer, a quantizer (None: continuous features) and how it is fit.

    The same JSON goes to every job of the units config (k-means fit, extraction, dedup, its evaluations), so
    `name` and `encoder_name` (the workflow's names) label every metric without a separate labels argument.
    """

    encoder: EncoderSpec
    layer: int = cfg_field(0, ge=0)
    quantizer: Literal["codebook", "kmeans"] | None = None
    k: int | None = cfg_field(None, ge=2)
    fit: KMeansFitConfig | None = None
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)
    name: str | None = None
    encoder_name: str | None = None

    def __post_init__(self) -> None:
        if self.quantizer == "kmeans" and (self.k is None or self.fit is None):
            raise EncoderConfigError("quantizer='kmeans' needs 'k' and 'fit'")
        if self.quantizer != "kmeans" and (self.k is not None or self.fit is not None):
            raise EncoderConfigError(f"'k' and 'fit' are only for quantizer='kmeans' (quantizer={self.quantizer!r})")
        validate_units_request(self.encoder.kind, self.layer, self.quantizer)

    def labels(self) -> dict[str, Any]:
        """What these units are, for metrics files and the report (eval.results.LABEL_KEYS)."""
        return {"units": self.name, "encoder": self.encoder_name, "encoder_kind": self.encoder.kind,
                "layer": self.layer, "quantizer": self.quantizer or "continuous", "k": self.k}


# What an out-of-memory error of an extraction job names (common.cli.run_main's memory_hint).
MEMORY_HINT = ("lower the audio per batch (--batch-seconds, default 400 on CUDA and 60 on CPU; --max-batch, default "
               "256) or the chunk length of long files (--chunk-seconds, default 40; it changes the units slightly), "
               "or run on a GPU with more free memory")
