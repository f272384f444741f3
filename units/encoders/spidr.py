"""Our SpidR / DinoSR encoders (pretrained here, or an official release file): features and codebook-head
probabilities of a padded batch, through the model's `layer_outputs` / `head_probs`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from spidr.model import standardize
from units.batching import pad
from units.config import EncoderConfigError
from units.encoders.base import Encoder


class SpidREncoder(Encoder):
    """Our SpidR / DinoSR models (pretrained here or an official release file), through `spidr.checkpoint`.

    Each utterance is standardised alone before padding, and the model masks the padding (batched == one at a
    time).
    """

    context_frames = 250

    def __init__(self, checkpoint: str, kind: str = "spidr", device: torch.device | str = "cpu",
                 bf16: bool = False) -> None:
        from spidr.checkpoint import load_encoder

        if not Path(checkpoint).is_file():
            raise EncoderConfigError(f"{checkpoint}: {kind} checkpoint not found")
        self.kind = kind
        self.checkpoint = checkpoint
        self.device = torch.device(device)
        self.bf16 = bf16
        self.model = load_encoder(checkpoint, map_location=self.device, kind=kind)
        self.num_layers = int(self.model.num_layers)
        self.dim = int(self.model.embed_dim)
        self.codebook_layers = tuple(int(x) for x in self.model.codebook_layers)
        self.codebook_size = int(self.model.codebook_size)

    def frame_count(self, num_samples: int) -> int:
        return int(self.model.frame_count(int(num_samples)))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "checkpoint": self.checkpoint}

    def _run(self, run: Callable[..., dict[int, Tensor]], wavs: Sequence[Tensor], layer: int) -> list[Tensor]:
        batch, lengths = pad([standardize(w) for w in self._to_device(wavs)])
        with self.inference():
            out = run(batch, [layer], lengths)[layer]
        return [out[b, : self.frame_count(n)] for b, n in enumerate(lengths)]

    @torch.no_grad()
    def features(self, wavs: Sequence[Tensor], layer: int) -> list[Tensor]:
        self.validate(layer)
        return self._run(self.model.layer_outputs, wavs, layer)

    @torch.no_grad()
    def codebook_probs(self, wavs: Sequence[Tensor], layer: int) -> list[Tensor]:
        self.validate(layer, "codebook")
        return self._run(self.model.head_probs, wavs, layer)
