"""Audio reading and validation: 16 kHz mono float32 waveforms, with every bad file reported by name."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from common.io import atomic_write

SAMPLE_RATE = 16_000
# The SpidR/HuBERT conv front end: a 320-sample hop (50 Hz frames) and a 400-sample receptive field, so anything
# shorter than a window yields zero frames.
HOP = 320
WINDOW = 400
MIN_SAMPLES = WINDOW
AUDIO_EXTENSIONS = (".wav", ".flac")


def frame_count(num_samples: int, hop: int = HOP, window: int = WINDOW) -> int:
    """Frames of a strided conv stack with this total hop and receptive field (0 for audio shorter than a window).

    Equal to applying (n - kernel) // stride + 1 layer by layer: floor((floor(a / s) - b) / t) = floor((a - bs) / st).
    """
    return max(0, (int(num_samples) - window) // hop + 1)


def conv_geometry(layers: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """(hop, window) in samples of a stack of (kernel, stride) convs: total stride and receptive field."""
    hop, window = 1, 1
    for kernel, stride in layers:
        window += (kernel - 1) * hop
        hop *= stride
    return hop, window


class BadAudioError(ValueError):
    """An audio file that cannot be used as is; the message names the file and the problem."""


@dataclass(frozen=True)
class AudioCheck:
    """What validation found about one file: `problem` is None for a good file."""

    path: str
    num_samples: int
    sample_rate: int
    channels: int
    problem: str | None = None


def _verdict(path: str, frames: int, rate: int, channels: int, convert: bool) -> AudioCheck:
    """The checks a header answers: empty, sample rate, channels, shorter than one frame (`frames` at `rate`)."""
    num_samples = round(frames * SAMPLE_RATE / rate) if rate != SAMPLE_RATE else frames
    if frames == 0:
        return AudioCheck(path, 0, rate, channels, "empty (0 samples)")
    if not convert and rate != SAMPLE_RATE:
        return AudioCheck(path, num_samples, rate, channels, f"sample rate {rate} Hz, expected {SAMPLE_RATE} Hz")
    if not convert and channels != 1:
        return AudioCheck(path, num_samples, rate, channels, f"{channels} channels, expected mono")
    if num_samples < MIN_SAMPLES:
        return AudioCheck(
            path, num_samples, rate, channels, f"too short ({num_samples} samples < {MIN_SAMPLES}, one frame)"
        )
    return AudioCheck(path, num_samples, rate, channels)


def check_header(path: str | Path, *, convert: bool = False) -> AudioCheck:
    """Check a file from its header only (rate, channels, frames): cheap enough for a 60k-hour corpus.

    Finds unreadable headers, empty, too-short, wrong-rate and multi-channel files; NaN/Inf or silent samples and
    a body cut short need `check_audio`, which decodes everything.
    """
    path = str(path)
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        return AudioCheck(path, 0, 0, 0, f"unreadable ({err})")
    return _verdict(path, int(info.frames), int(info.samplerate), int(info.channels), convert)


def check_audio(path: str | Path, *, convert: bool = False) -> AudioCheck:
    """Read a whole file and report the first problem that makes it unusable.

    With `convert`, another sample rate or several channels are not problems (they are resampled / downmixed
    at load time); unreadable, empty, too-short, non-finite and all-zero (silent) audio always is.
    """
    path = str(path)
    try:
        info = sf.info(path)
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        return AudioCheck(path, 0, 0, 0, f"unreadable ({err})")
    check = _verdict(path, data.shape[0], rate, info.channels, convert)
    if check.problem is not None and data.shape[0] == 0:
        return check
    if not np.isfinite(data).all():
        return AudioCheck(path, check.num_samples, rate, info.channels, "contains NaN or Inf samples")
    if check.problem is None and not data.any():
        return AudioCheck(path, check.num_samples, rate, info.channels, "silent (every sample is 0)")
    return check


def load_audio(path: str | Path, *, convert: bool = True) -> np.ndarray:
    """Load a file as a 1-D float32 array at 16 kHz; downmix and resample only when `convert` allows it."""
    path = str(path)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:
        if not os.path.exists(path):  # soundfile says only "System error." for a file that is gone
            raise BadAudioError(f"{path}: file not found") from None
        raise BadAudioError(f"{path}: unreadable audio ({err})") from err
    if data.shape[1] != 1:
        if not convert:
            raise BadAudioError(f"{path}: {data.shape[1]} channels, expected mono")
        data = data.mean(axis=1, keepdims=True)
    wav = data[:, 0]
    if rate != SAMPLE_RATE:
        if not convert:
            raise BadAudioError(f"{path}: sample rate {rate} Hz, expected {SAMPLE_RATE} Hz")
        wav = resample(wav, rate)
    if wav.size == 0:
        raise BadAudioError(f"{path}: empty audio")
    if not np.isfinite(wav).all():
        raise BadAudioError(f"{path}: contains NaN or Inf samples")
    return np.ascontiguousarray(wav, dtype=np.float32)


def resample(wav: np.ndarray, rate: int) -> np.ndarray:
    """Resample a mono waveform to 16 kHz with torchaudio's windowed-sinc resampler."""
    import torch
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), orig_freq=rate, new_freq=SAMPLE_RATE)
    return out.numpy().astype(np.float32)


def write_wav(path: str | Path, wav: np.ndarray) -> None:
    """Write 16 kHz mono 16-bit PCM atomically (a killed writer never leaves a truncated wav behind)."""
    with atomic_write(path) as tmp:
        sf.write(str(tmp), np.clip(wav, -1.0, 1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
