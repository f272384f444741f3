"""The interface every encoder family implements (frame features of 16 kHz mono waveforms), and device choice."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from data.audio import HOP, SAMPLE_RATE, WINDOW, frame_count
from units.batching import inference_context
from units.config import EncoderConfigError, validate_units_request


class Encoder:
    """Frame features of 16 kHz mono waveforms. Subclasses set the attributes and implement `features`."""

    kind: str
    num_layers: int
    dim: int
    codebook_layers: tuple[int, ...] = ()
    codebook_size: int | None = None
    hop: int = HOP
    window: int = WINDOW
    # Frames of context a chunk needs on each side so that its core frames barely depend on where it was cut.
    context_frames: int = 250
    device: torch.device = torch.device("cpu")
    bf16: bool = False

    @property
    def frame_rate(self) -> float:
        return SAMPLE_RATE / self.hop

    def frame_count(self, num_samples: int) -> int:
        return frame_count(num_samples, self.hop, self.window)

    def validate(self, layer: int, quantizer: str | None = None) -> None:
        validate_units_request(self.kind, layer, quantizer, num_layers=self.num_layers,
                               codebook_layers=self.codebook_layers)

    def features(self, wavs: Sequence[Tensor], layer: int) -> list[Tensor]:
        """Per waveform (1-D, 16 kHz), its (frame_count(len), dim) features at `layer`, on `self.device`."""
        raise NotImplementedError

    def codebook_probs(self, wavs: Sequence[Tensor], layer: int) -> list[Tensor]:
        """Per waveform, the (frames, codebook_size) codebook-head probabilities at `layer`."""
        self.validate(layer, "codebook")
        raise EncoderConfigError(f"a {self.kind!r} encoder has no codebook heads")

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_layers": self.num_layers, "dim": self.dim, "frame_rate": self.frame_rate,
                "codebook_layers": list(self.codebook_layers), "codebook_size": self.codebook_size}

    def inference(self):
        """The context every forward runs under (units.batching.inference_context: precision, attention kernels)."""
        return inference_context(self.device, self.bf16)

    def _to_device(self, wavs: Sequence[Tensor]) -> list[Tensor]:
        return [torch.as_tensor(w, dtype=torch.float32).to(self.device, non_blocking=True) for w in wavs]


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EncoderConfigError(f"device={device!r} but CUDA is not available")
    return torch.device(device)
