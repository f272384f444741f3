"""MFCC baseline encoder: 13 MFCCs + deltas + delta-deltas (39 dims) at 50 Hz, one "layer", 0."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from data.audio import HOP, SAMPLE_RATE, WINDOW
from units.encoders.base import Encoder


class MFCCEncoder(Encoder):
    """13 MFCCs (40 log-mel bands, 25 ms window, 20 ms hop, no CMVN) + deltas + delta-deltas: 39 dims at 50 Hz.

    Every step is local in time (log-mel rather than dB with a per-utterance floor, no normalisation), so a frame
    depends only on samples within +-4 frames: chunking with context and batching cannot change it.
    """

    kind = "mfcc"
    num_layers = 0
    dim = 39
    context_frames = 8

    def __init__(self, device: torch.device | str = "cpu") -> None:
        import torchaudio

        self.device = torch.device(device)
        self.mfcc = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=13, log_mels=True,
            melkwargs={"n_fft": WINDOW, "win_length": WINDOW, "hop_length": HOP, "center": False, "n_mels": 40},
        ).to(self.device)

    @torch.no_grad()
    def features(self, wavs: Sequence[Tensor], layer: int) -> list[Tensor]:
        import torchaudio.functional as AF

        self.validate(layer)
        out = []
        for wav in self._to_device(wavs):
            if wav.numel() < self.window:
                out.append(torch.zeros(0, self.dim, device=self.device))
                continue
            static = self.mfcc(wav)  # (13, T)
            delta = AF.compute_deltas(static)
            out.append(torch.cat([static, delta, AF.compute_deltas(delta)]).T.contiguous())
        return out
