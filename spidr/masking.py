"""Span masking of the student input, computed on CPU in the data loader (the official `compute_mask_indices`,
static lengths, overlap allowed).

Each row draws its own number of spans, int(prob * T / length + U[0, 1)) (at least `min_masks`), as the official
code does for every batch it masks (it always passes a padding mask, which takes its per-row branch; it also draws
one batch-wide count first and never uses it, so we draw it too, keeping the random stream the same). The span
starts are drawn without replacement among the first T - length frames; each span masks `length` frames (spans may
overlap). Every row is then randomly subsampled to the smallest masked count in the batch, so the result is a
rectangular (B, M) tensor of sorted frame indices (about 57% of frames at prob 0.8, length 10).
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

    def span_count() -> int:
        return max(min_masks, int(prob * frames / length + float(torch.rand((), generator=generator))))

    span_count()  # the official batch-wide count: drawn, unused with a padding mask
    offsets = torch.arange(length)
    rows = []
    for _ in range(batch):
        num = span_count()
        # very short input: fewer candidate starts than spans (the official fallback)
        span_range = frames - length if frames - length > num else num + 1
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
