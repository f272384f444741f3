"""Corpus reading for the units stage: corpus shards (one extraction job each), resumable pieces of consecutive
manifest rows, audio loaded ahead in threads, bad audio handled per policy (never silently), a progress bar."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from data.audio import SAMPLE_RATE, WINDOW, BadAudioError, load_audio
from units.config import BAD_AUDIO_POLICIES, EncoderConfigError


@dataclass
class Shard:
    """Consecutive manifest rows, their audio (bad files left out) and what was wrong with the others."""

    index: int
    ids: list[str]
    wavs: list[Tensor]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(w.numel() for w in self.wavs) / SAMPLE_RATE


def plan_shards(num_samples: Sequence[int], shard_samples: int) -> list[list[int]]:
    """Row indices per shard: consecutive rows up to shard_samples of audio each (at least one row)."""
    shards: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, n in enumerate(num_samples):
        if current and total + int(n) > shard_samples:
            shards.append(current)
            current, total = [], 0
        current.append(i)
        total += int(n)
    if current:
        shards.append(current)
    return shards


def split_rows(num_samples: Sequence[int], num_shards: int) -> list[range]:
    """The items of each of `num_shards` corpus shards (one extraction job each): consecutive items (manifest rows,
    or the resumable pieces of `plan_shards`), balanced by audio, each item in exactly one shard (a shard may be
    empty when there are few items).

    Row r goes to the shard its audio's midpoint falls in, so the split depends only on the manifest and N.
    """
    if num_shards < 1:
        raise EncoderConfigError(f"num_shards={num_shards} must be >= 1")
    sizes = np.asarray(num_samples, dtype=np.float64)
    ends = np.cumsum(sizes)
    total = float(ends[-1]) if len(ends) else 0.0
    if total <= 0:
        return [range(0, len(sizes))] + [range(len(sizes), len(sizes))] * (num_shards - 1)
    shard_of = np.minimum((ends - sizes / 2) * num_shards // total, num_shards - 1).astype(np.int64)
    bounds = np.searchsorted(shard_of, np.arange(num_shards + 1), side="left")  # shard_of is non-decreasing
    return [range(int(bounds[i]), int(bounds[i + 1])) for i in range(num_shards)]


def _load_checked(path: str, min_samples: int) -> np.ndarray:
    wav = load_audio(path)
    if wav.size < min_samples:
        raise BadAudioError(f"{path}: too short ({wav.size} samples < {min_samples}, not one frame)")
    return wav


def iter_shards(ids: Sequence[str], paths: Sequence[str], shards: Sequence[tuple[int, list[int]]], *,
                bad_audio: str = "fail", min_samples: int = WINDOW, workers: int = 4,
                log=sys.stderr) -> Iterator[Shard]:
    """Yield each (index, rows) shard with its audio loaded; the next shard loads while the caller works.

    bad_audio: 'fail' raises BadAudioError naming the file; 'skip' logs the file and the problem, and lists it in
    Shard.skipped so the caller can count and record it (never silent).
    """
    if bad_audio not in BAD_AUDIO_POLICIES:
        raise EncoderConfigError(f"bad_audio={bad_audio!r}; expected one of {BAD_AUDIO_POLICIES}")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:

        def submit(rows: list[int]) -> list[Future]:
            return [pool.submit(_load_checked, paths[r], min_samples) for r in rows]

        pending = [(index, rows, submit(rows)) for index, rows in shards[:1]]
        for k in range(len(shards)):
            index, rows, futures = pending.pop(0)
            if k + 1 < len(shards):
                nxt = shards[k + 1]
                pending.append((nxt[0], nxt[1], submit(nxt[1])))
            shard = Shard(index, [], [])
            for row, future in zip(rows, futures, strict=True):
                try:
                    wav = future.result()
                except BadAudioError as err:
                    if bad_audio == "fail":
                        for _, _, fs in pending:
                            for f in fs:
                                f.cancel()
                        raise BadAudioError(
                            f"{err} (utterance {ids[row]}): the audio is not what its manifest recorded; restore the "
                            "file, or rebuild the manifest (the workflow does when the folder changes); to drop and "
                            "count unreadable files instead, set extraction: {bad_audio: skip} in the workflow config "
                            "(python -m units.extract: {\"extraction\": {\"bad_audio\": \"skip\"}} in --config)"
                        ) from err
                    print(f"bad audio, skipped: {ids[row]} {paths[row]}: {err}", file=log)
                    shard.skipped.append({"id": ids[row], "path": paths[row], "problem": str(err)})
                    continue
                shard.ids.append(ids[row])
                shard.wavs.append(torch.from_numpy(wav))
            yield shard


@contextmanager
def progress_bar(total_seconds: float, desc: str, enabled: bool = True):
    """A tqdm bar in seconds of audio (stderr); yields the update function."""
    from tqdm import tqdm

    with tqdm(total=round(total_seconds, 1), desc=desc, unit="s", unit_scale=True, mininterval=2.0,
              file=sys.stderr, dynamic_ncols=True, disable=not enabled) as bar:
        yield lambda seconds: bar.update(round(seconds, 2))


