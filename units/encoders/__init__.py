"""Speech encoders behind one interface, one module per family: SpidR / DinoSR (`spidr`), Hugging Face HuBERT /
wav2vec 2.0 / WavLM (`hf`), MFCC (`mfcc`); layer numbering per family is in units.config. They run over a corpus
through units.batching.encode_batched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from units.config import PRECISIONS, EncoderConfigError, EncoderSpec, validate_units_request
from units.encoders.base import Encoder, resolve_device
from units.encoders.hf import HFEncoder
from units.encoders.mfcc import MFCCEncoder
from units.encoders.spidr import SpidREncoder

__all__ = ["Encoder", "HFEncoder", "MFCCEncoder", "SpidREncoder", "check_units_config", "get_encoder",
           "resolve_device"]


def get_encoder(spec: str | Mapping[str, Any] | EncoderSpec, device: str | torch.device = "cpu",
                precision: str = "auto") -> Encoder:
    """Load the encoder a spec names. precision: fp32 | bf16 (autocast, CUDA only) | auto (bf16 on CUDA)."""
    spec = EncoderSpec.parse(spec)
    device = resolve_device(device) if isinstance(device, str) else device
    if precision not in PRECISIONS:
        raise EncoderConfigError(f"precision={precision!r}; expected one of {PRECISIONS}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if spec.kind == "mfcc":
        return MFCCEncoder(device)
    if spec.kind == "hf":
        return HFEncoder(spec.model, device, bf16, spec.normalize)
    return SpidREncoder(spec.checkpoint, spec.kind, device, bf16)


def check_units_config(spec: str | Mapping[str, Any] | EncoderSpec, layer: int, quantizer: str | None = None,
                       *, train_config: Mapping[str, Any] | None = None, num_layers: int | None = None,
                       codebook_layers: Sequence[int] | None = None) -> None:
    """Validate a units config before running anything, finding the encoder's depth and heads cheaply.

    Sources, first that applies: explicit `num_layers` / `codebook_layers`; `train_config` (the spidr.config JSON
    of a SpidR / DinoSR still to be pretrained); an HF config (local dir, or the hub cache); an existing SpidR
    checkpoint (loaded on CPU). Without any, only what the kind alone decides is checked.
    """
    spec = EncoderSpec.parse(spec)
    if train_config is not None and num_layers is None:
        if spec.kind not in ("spidr", "dinosr"):
            raise EncoderConfigError(f"a training config only describes spidr/dinosr encoders, not {spec.kind!r}")
        from spidr.config import TrainConfig

        model = TrainConfig.from_dict({"kind": spec.kind, **train_config}).model
        num_layers, codebook_layers = model.num_layers, model.codebook_layers
    if num_layers is None and spec.kind == "hf":
        try:
            from transformers import AutoConfig

            num_layers = int(AutoConfig.from_pretrained(spec.model).num_hidden_layers)
        except (OSError, ValueError, AttributeError):
            num_layers = None  # not at hand (offline, not downloaded yet): checked again when the model loads
    if num_layers is None and spec.kind in ("spidr", "dinosr") and Path(spec.checkpoint).is_file():
        enc = get_encoder(spec, "cpu", "fp32")
        num_layers, codebook_layers = enc.num_layers, enc.codebook_layers
    validate_units_request(spec.kind, layer, quantizer, num_layers=num_layers, codebook_layers=codebook_layers)
