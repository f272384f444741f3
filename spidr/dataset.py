"""Pretraining data: manifest -> length-bucketed batches, each item randomly cropped to the batch's shortest one.

No padding: a batch is a dense (B, L) tensor of standardised waveforms plus (B, M) masked frame indices, built in
the loader (worker) process.

Planning an epoch (paper / official recipe): lengths are clipped to `max_samples`, items shorter than
`min_samples` dropped, the rest split into `num_buckets` uniform length buckets; items are shuffled within
buckets, micro-batches filled greedily in length order up to `batch_samples` summed (clipped) samples, and their
order shuffled. The data order is global, whatever the number of processes: optimiser step g of an epoch trains on
micro-batches g*n .. g*n + n - 1 of that list (n = world size x accumulation, fixed by the recipe), process r
taking the r-th run of `accumulation` of them; the remainder that does not fill a step is dropped. Everything
random about micro-batch i of epoch e (crop offsets, masks) comes from a generator seeded by (seed, e, i), so a
resumed run, or one on another number of processes, sees exactly the same batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from data.audio import SAMPLE_RATE, conv_geometry, frame_count, load_audio
from data.manifest import read_manifest
from spidr.config import DataConfig, MaskConfig
from spidr.masking import mask_indices


def derived_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints / strings (stable across processes and Python versions)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def plan_batches(
    lengths: Sequence[int], *, batch_samples: int, min_samples: int, max_samples: int, num_buckets: int,
    seed: int, epoch: int, shuffle: bool = True,
) -> list[list[int]]:
    """Batches of item indices for one epoch (see the module docstring)."""
    lengths = np.minimum(np.asarray(lengths, dtype=np.int64), max_samples)
    items = np.flatnonzero(lengths >= min_samples)
    if items.size == 0:
        return []
    items = items[np.argsort(lengths[items], kind="stable")]
    boundaries = np.linspace(min_samples - 1, max_samples + 1, num_buckets + 1)
    bucket_of = np.searchsorted(boundaries, lengths[items], side="left")
    gen = torch.Generator().manual_seed(derived_seed("plan", seed, epoch))
    ordered: list[int] = []
    for bucket in np.unique(bucket_of):
        members = items[bucket_of == bucket]
        if shuffle:
            members = members[torch.randperm(members.size, generator=gen).numpy()]
        ordered.extend(int(i) for i in members)
    batches: list[list[int]] = []
    batch: list[int] = []
    total = 0
    for i in ordered:
        if batch and total + lengths[i] > batch_samples:
            batches.append(batch)
            batch, total = [], 0
        batch.append(i)
        total += int(lengths[i])
    if batch:
        batches.append(batch)
    if shuffle:
        batches = [batches[j] for j in torch.randperm(len(batches), generator=gen).tolist()]
    return batches


def standardize_np(wav: np.ndarray) -> Tensor:
    w = torch.from_numpy(wav).float()
    return F.layer_norm(w, w.shape)


class PretrainBatches(Dataset):
    """Item j = this rank's j-th micro-batch of the current epoch: {"wavs": (B, L), "mask": (B, M), "epoch", "index"}.

    Training (`drop_remainder`): items j*accumulation .. (j+1)*accumulation - 1 make this rank's share of
    optimiser step j. Validation: every micro-batch once, dealt to ranks in turn.
    """

    def __init__(
        self, manifest: str | Path, data: DataConfig, mask: MaskConfig, conv_layers: Sequence[tuple[int, int, int]],
        *, seed: int, rank: int = 0, world: int = 1, accumulation: int = 1, shuffle: bool = True,
        drop_remainder: bool = True,
    ) -> None:
        table = read_manifest(manifest)
        self.manifest = str(manifest)
        self.paths = list(table["path"])
        self.lengths = [int(n) for n in table["num_samples"]]
        self.data, self.mask_cfg, self.conv_layers = data, mask, tuple(conv_layers)
        self.hop, self.window = conv_geometry((k, s) for _, k, s in self.conv_layers)
        self.seed, self.rank, self.world, self.accumulation = seed, rank, world, accumulation
        self.shuffle, self.drop_remainder = shuffle, drop_remainder
        self.num_dropped = sum(n < data.min_samples for n in self.lengths)
        if self.num_dropped == len(self.lengths):
            raise ValueError(f"{manifest}: every utterance is shorter than data.min_samples={data.min_samples}")
        self.epoch = -1
        self.batches: list[list[int]] = []  # every micro-batch of the epoch, in the global order
        self.indices: list[int] = []  # this rank's micro-batches, as indices into `batches`
        self.set_epoch(0)

    @property
    def audio_seconds(self) -> float:
        return sum(min(n, self.data.max_samples) for n in self.lengths if n >= self.data.min_samples) / SAMPLE_RATE

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps in one epoch (training)."""
        return len(self.indices) // self.accumulation

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.epoch:
            return
        d = self.data
        self.batches = plan_batches(
            self.lengths, batch_samples=d.batch_samples, min_samples=d.min_samples, max_samples=d.max_samples,
            num_buckets=d.num_buckets, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
        )
        if self.drop_remainder:
            per_step = self.world * self.accumulation
            steps = len(self.batches) // per_step
            if steps == 0:
                raise ValueError(
                    f"{self.manifest}: {len(self.batches)} micro-batch(es) of data.batch_samples={d.batch_samples} "
                    f"per epoch cannot fill one global batch of {per_step} ({self.world} process(es) x "
                    f"{self.accumulation} accumulation); lower data.global_batch_samples or use more data"
                )
            first = self.rank * self.accumulation
            self.indices = [g * per_step + first + a for g in range(steps) for a in range(self.accumulation)]
        else:
            self.indices = list(range(self.rank, len(self.batches), self.world))
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict:
        i = self.indices[j]
        # The trailing 0 stood for the rank when batches were dealt per rank: single-process runs keep their data.
        gen = torch.Generator().manual_seed(derived_seed("batch", self.seed, self.epoch, i, 0))
        wavs = []
        for k in self.batches[i]:
            w = load_audio(self.paths[k])
            wavs.append(standardize_np(w) if self.data.standardize else torch.from_numpy(w))
        n = min(min(w.numel() for w in wavs), self.data.max_samples)
        cropped = []
        for w in wavs:
            offset = int(torch.randint(w.numel() - n + 1, (), generator=gen)) if w.numel() > n else 0
            cropped.append(w[offset : offset + n])
        frames = frame_count(n, self.hop, self.window)
        m = self.mask_cfg
        mask = mask_indices(len(cropped), frames, prob=m.prob, length=m.length, min_masks=m.min_masks, generator=gen)
        return {"wavs": torch.stack(cropped), "mask": mask, "epoch": self.epoch, "index": i}


def make_loader(ds: PretrainBatches, *, start: int = 0, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A loader over batches start..len(ds)-1 of the dataset's current epoch (its own generator: no global RNG)."""
    kw = {"prefetch_factor": 4} if num_workers > 0 else {}
    return DataLoader(
        ds, batch_size=None, sampler=list(range(start, len(ds))), num_workers=num_workers,
        pin_memory=pin_memory, generator=torch.Generator(), **kw,
    )
