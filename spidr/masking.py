"""Span masking of the student input, computed on CPU in the data loader (fairseq `compute_mask_indices`, static).

Each row gets int(prob * T / length + U[0, 1)) (at least `min_masks`) span starts drawn without replacement
among the first T - length frames; each masks `length` frames (spans may overlap). Every row is then randomly
subsampled to the smallest masked count in the batch, so the result is a rectangular (B, M) tensor of sorted
frame indices (about 57% of frames at prob 0.8, length 10).
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_indices(
    batch: int, frames: int, *, prob: float = 0.8, length: int = 10, min_masks: int = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(batch, M) int64 sorted masked frame indices, the same M for every row (unpadded batches: same T)."""
    if frames <= 0:
        raise ValueError(f"cannot mask {frames} frames")
    num = max(min_masks, int(prob * frames / length + float(torch.rand((), generator=generator))))
    span_range = frames - length
    if span_range <= num:  # very short input: fewer candidate starts than spans
        span_range = frames - num - 1
    span_range = max(1, span_range)
    offsets = torch.arange(length)
    rows = []
    for _ in range(batch):
        starts = torch.randperm(span_range, generator=generator)[:num]
        idx = (starts.unsqueeze(1) + offsets).flatten()
        rows.append(torch.unique(idx[idx < frames]))  # sorted
    keep = min(r.numel() for r in rows)
    out = torch.empty(batch, keep, dtype=torch.int64)
    for i, r in enumerate(rows):
        if r.numel() > keep:
            r = r[torch.randperm(r.numel(), generator=generator)[:keep]].sort().values
        out[i] = r
    return out
