"""Inference batching, one layer for every encoder family: chunked pieces, length-bucketed batches, padding,
the attention kernels and precision of inference, and device-to-host copies that overlap the next batch.

`encode_batched` cuts utterances into pieces (long ones into chunks with context on both sides, whose core frames
are kept), sorts the pieces by length and batches them under a padded-samples budget; an encoder's `compute` pads
a batch (`pad`), runs it under `inference_context` and returns one (frames, ...) device tensor per piece. Every
encoder guarantees that padding never changes the frames of the real audio, so batched == one at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from data.audio import HOP, SAMPLE_RATE, WINDOW, BadAudioError, frame_count

# Not cuDNN attention: it builds a new plan (~10 ms of CPU per layer) for every new sequence length, and inference
# batches have a new length almost every time (README "Performance (measured)").
INFERENCE_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@contextmanager
def inference_context(device: torch.device, bf16: bool) -> Iterator[None]:
    """What every encoder runs under: bf16 autocast on CUDA when asked for (fp32 elsewhere), no cuDNN attention."""
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else nullcontext()
    with amp, sdpa_kernel(INFERENCE_SDPA):
        yield


def pad(wavs: Sequence[Tensor]) -> tuple[Tensor, list[int]]:
    """Zero-padded (B, longest) batch of 1-D waveforms (on their device) and their lengths in samples."""
    for i, w in enumerate(wavs):
        if w.dim() != 1:
            raise ValueError(f"waveform {i} has shape {tuple(w.shape)}; expected a 1-D 16 kHz mono waveform")
    return nn.utils.rnn.pad_sequence(list(wavs), batch_first=True), [int(w.numel()) for w in wavs]


@dataclass(frozen=True)
class Piece:
    """A window of one utterance to encode: samples [start, stop); of its frames, keep [skip, skip + keep)."""

    utt: int
    start: int
    stop: int
    skip: int
    keep: int


def plan_pieces(utt: int, num_samples: int, *, hop: int = HOP, window: int = WINDOW, chunk_frames: int = 1500,
                context_frames: int = 250) -> list[Piece]:
    """Whole utterance if it has <= chunk_frames frames; else chunks of chunk_frames core frames with up to
    context_frames of context each side. Windows start on a hop boundary, so window frame j is utterance frame
    start / hop + j exactly; the last window runs to the end of the audio, like the unchunked utterance."""
    total = frame_count(num_samples, hop, window)
    if total <= chunk_frames:
        return [Piece(utt, 0, num_samples, 0, total)]
    pieces = []
    for first in range(0, total, chunk_frames):
        last = min(first + chunk_frames, total)
        lo, hi = max(0, first - context_frames), min(total, last + context_frames)
        stop = num_samples if hi == total else (hi - 1) * hop + window
        pieces.append(Piece(utt, lo * hop, stop, first - lo, last - first))
    return pieces


def batches_of(todo: Sequence[int], pieces: Sequence[Piece], batch_samples: int, max_batch: int) -> list[list[int]]:
    """Piece indices, longest first (an out-of-memory shows at once), greedily batched while
    batch size x longest piece <= batch_samples."""
    size = [p.stop - p.start for p in pieces]
    order = sorted(todo, key=lambda k: (-size[k], k))
    batches: list[list[int]] = []
    for k in order:
        if batches:
            current = batches[-1]
            if len(current) < max_batch and (len(current) + 1) * size[current[0]] <= batch_samples:
                current.append(k)
                continue
        batches.append([k])
    return batches


def encode_batched(wavs: Sequence[Tensor], compute: Callable[[list[Tensor]], list[Tensor]], *,
                   frame_count_fn: Callable[[int], int], hop: int = HOP, window: int = WINDOW,
                   chunk_frames: int = 1500, context_frames: int = 250, batch_samples: int = SAMPLE_RATE * 60,
                   max_batch: int = 64, progress: Callable[[float], None] | None = None) -> list[Tensor]:
    """Run `compute` (a batch of waveforms -> one (frames, ...) tensor each) over utterances of any length.

    Returns, per utterance, the concatenated core frames of its pieces on CPU: exactly frame_count_fn(len) frames.
    On CUDA, a batch's outputs are copied to the host on a side stream while the next batch computes (the host
    queues batch k + 1 before it waits for batch k). `progress` receives the seconds of audio finished per batch.
    """
    pieces = [p for i, w in enumerate(wavs)
              for p in plan_pieces(i, int(w.numel()), hop=hop, window=window, chunk_frames=chunk_frames,
                                   context_frames=context_frames)]
    done: list[Tensor | None] = [None] * len(pieces)
    copy_stream: torch.cuda.Stream | None = None

    def collect(batch: list[int], outs: list[Tensor], ready: torch.cuda.Event | None) -> None:
        with torch.cuda.stream(copy_stream) if ready is not None else nullcontext():
            if ready is not None:
                copy_stream.wait_event(ready)
            for k, out in zip(batch, outs, strict=True):  # per piece: small host buffers are reused
                piece = pieces[k]
                done[k] = out[piece.skip: piece.skip + piece.keep].cpu()
        if progress is not None:
            progress(sum(pieces[k].keep for k in batch) * hop / SAMPLE_RATE)

    todo = [k for k, p in enumerate(pieces) if p.keep > 0]
    pending = None
    for batch in batches_of(todo, pieces, batch_samples, max_batch):
        outs = compute([wavs[pieces[k].utt][pieces[k].start: pieces[k].stop] for k in batch])
        for k, out in zip(batch, outs, strict=True):  # shapes are known on the host: no device sync
            expected = frame_count_fn(pieces[k].stop - pieces[k].start)
            if out.shape[0] != expected:
                raise RuntimeError(f"encoder returned {out.shape[0]} frames for {pieces[k].stop - pieces[k].start} "
                                   f"samples, expected {expected}")
        ready = None
        if outs and outs[0].is_cuda:
            copy_stream = copy_stream or torch.cuda.Stream(outs[0].device)
            ready = torch.cuda.Event()
            ready.record()
        if pending is not None:
            collect(*pending)
        pending = (batch, outs, ready)
    if pending is not None:
        collect(*pending)
    results = []
    for i, w in enumerate(wavs):
        parts = [done[k] for k, p in enumerate(pieces) if p.utt == i and done[k] is not None]
        if not parts:
            raise BadAudioError(f"utterance {i}: {w.numel()} samples give no frame")
        results.append(torch.cat(parts))
    return results
