"""Speech encoders behind one interface (SpidR/DinoSR, Hugging Face HuBERT/wav2vec 2.0/WavLM, MFCC), run batched.

Layer numbering, one convention per family (a recurring source of bugs elsewhere, so it is tested):
- `spidr` / `dinosr`: layers 1..num_layers; layer L is the FFN output *before the residual* of transformer
  block L (the official `get_intermediate_outputs(wav)[L - 1]`). Codebook units exist only for the layers with a
  prediction head (`codebook_layers`, the last 8 of 12 in the paper's base model).
- `hf`: layers 0..num_layers, exactly `model(wav, output_hidden_states=True).hidden_states[L]` of transformers 5:
  0 = the pre-transformer embeddings (feature projection + positional conv, the input of block 1), L >= 1 = the
  output of block L (residual stream). For pre-LN ("stable layer norm") models, L = num_layers is the output of
  the last block *before* the final LayerNorm (transformers 5; transformers 4 applied the final LayerNorm there).
- `mfcc`: one "layer", 0: 13 MFCCs + deltas + delta-deltas (39 dims).
All encoders give 50 Hz frames: frame i covers samples [320 i, 320 i + 400), so an utterance of N samples has
(N - 400) // 320 + 1 frames, and frame i is centred at 0.01 + 0.02 i s (the ABX convention).

Running an encoder over many utterances (`encode_batched`): utterances are cut into pieces (long ones into chunks
with context on both sides, whose core frames are kept), pieces are sorted by length and batched under a
padded-samples budget, and every encoder guarantees that padding never changes the frames of the real audio.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from data.audio import SAMPLE_RATE, BadAudioError, load_audio
from units.config import (  # noqa: F401  (re-exported while the importers move)
    BAD_AUDIO_POLICIES,
    ENCODER_KINDS,
    HOP,
    QUANTIZERS,
    WINDOW,
    EncoderConfigError,
    EncoderSpec,
    RunOptions,
    add_run_options,
    frame_count,
    layer_range,
    run_options_from_args,
    validate_units_request,
)

# ---------------------------------------------------------------------------------------------------------------
# Encoders


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

    def autocast(self):
        """bf16 autocast on CUDA when asked for; fp32 everywhere else."""
        if self.bf16 and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _to_device(self, wavs: Sequence[Tensor]) -> list[Tensor]:
        return [torch.as_tensor(w, dtype=torch.float32).to(self.device, non_blocking=True) for w in wavs]


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


class _PerUtteranceConv(nn.Module):
    """Stands in for an HF conv feature encoder: runs it on each utterance alone, then pads the outputs.

    HuBERT-base / wav2vec 2.0-base front ends GroupNorm over time in their first conv layer, so running them on a
    zero-padded batch changes every frame of the shorter utterances; one at a time, they never see padding.
    """

    def __init__(self, conv: nn.Module, lengths: Sequence[int]) -> None:
        super().__init__()
        self.conv = conv
        self.lengths = list(lengths)

    def forward(self, input_values: Tensor) -> Tensor:
        outs = [self.conv(input_values[b: b + 1, :n]) for b, n in enumerate(self.lengths)]
        frames = max(o.shape[-1] for o in outs)
        return torch.cat([nn.functional.pad(o, (0, frames - o.shape[-1])) for o in outs])


class HFEncoder(Encoder):
    """A transformers wav2vec 2.0-family model (HuBERT, wav2vec 2.0, WavLM, data2vec-audio) from a hub name or dir.

    Batches are zero-padded with an attention mask; GroupNorm front ends run one utterance at a time (see
    `_PerUtteranceConv`), so the frames of an utterance do not depend on what it was batched with. Only the
    blocks up to the requested layer run.
    """

    kind = "hf"

    def __init__(self, name: str, device: torch.device | str = "cpu", bf16: bool = False,
                 normalize: bool | None = None) -> None:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self.model = AutoModel.from_pretrained(name)
        except (OSError, ValueError) as err:
            raise EncoderConfigError(f"cannot load Hugging Face model {name!r}: {err}") from err
        cfg = self.model.config
        parts = ("feature_extractor", "encoder")
        if not all(hasattr(self.model, a) for a in parts) or not hasattr(cfg, "conv_stride"):
            raise EncoderConfigError(
                f"{name!r} ({type(self.model).__name__}) is not a wav2vec 2.0-style speech encoder "
                "(HuBERT, wav2vec 2.0, WavLM, data2vec-audio)"
            )
        self.name = name
        self.device = torch.device(device)
        self.bf16 = bf16
        self.model.eval().to(self.device)
        self.num_layers = int(cfg.num_hidden_layers)
        self.dim = int(cfg.hidden_size)
        self.group_norm = getattr(cfg, "feat_extract_norm", "layer") == "group"
        self.hop = math.prod(cfg.conv_stride)
        window = 1
        for kernel, stride in zip(reversed(cfg.conv_kernel), reversed(cfg.conv_stride), strict=True):
            window = (window - 1) * stride + kernel
        self.window = window
        self.conv_layers = list(zip(cfg.conv_kernel, cfg.conv_stride, strict=True))
        self.normalize = _hf_do_normalize(name) if normalize is None else normalize

    def frame_count(self, num_samples: int) -> int:
        # Layer by layer, as the model computes it (equal to the closed form for the usual 400/320 stack).
        n = int(num_samples)
        for kernel, stride in self.conv_layers:
            n = (n - kernel) // stride + 1
            if n <= 0:
                return 0
        return n

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.name, "class": type(self.model).__name__,
                "normalize": self.normalize, "group_norm_front_end": self.group_norm}

    def _prepare(self, wav: Tensor) -> Tensor:
        # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm, per utterance, before any padding.
        if self.normalize:
            wav = (wav - wav.mean()) / torch.sqrt(wav.var(unbiased=False) + 1e-7)
        return wav

    @torch.no_grad()
    def features(self, wavs: Sequence[Tensor], layer: int) -> list[Tensor]:
        self.validate(layer)
        wavs = [self._prepare(w) for w in self._to_device(wavs)]
        lengths = [w.numel() for w in wavs]
        batch = nn.utils.rnn.pad_sequence(wavs, batch_first=True)
        positions = torch.arange(batch.shape[1], device=self.device)
        mask = positions[None] < torch.tensor(lengths, device=self.device)[:, None]
        encoder = self.model.encoder
        blocks = encoder.layers
        captured: list[Tensor] = []
        if layer == 0:
            hook = blocks[0].register_forward_pre_hook(
                lambda _m, args, kwargs: captured.append(args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True,
            )
        else:
            hook = blocks[layer - 1].register_forward_hook(
                lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
            )
        conv = self.model.feature_extractor
        try:
            encoder.layers = blocks[: max(layer, 1)]  # the blocks above `layer` would be wasted work
            if self.group_norm and len(wavs) > 1:
                self.model.feature_extractor = _PerUtteranceConv(conv, lengths)
            with self.autocast():
                self.model(batch, attention_mask=mask.long())
        finally:
            hook.remove()
            encoder.layers = blocks
            self.model.feature_extractor = conv
        hidden = captured[0]
        return [hidden[b, : self.frame_count(n)] for b, n in enumerate(lengths)]


def _hf_do_normalize(name: str) -> bool:
    """The model's own preprocessing: `do_normalize` of its preprocessor config; False when it ships none."""
    path = Path(name) / "preprocessor_config.json"
    if path.is_file():
        return bool(json.loads(path.read_text()).get("do_normalize", False))
    try:
        from transformers import AutoFeatureExtractor

        return bool(getattr(AutoFeatureExtractor.from_pretrained(name), "do_normalize", False))
    except (OSError, ValueError):
        return False


class SpidREncoder(Encoder):
    """Our SpidR / DinoSR models (pretrained here or an official release file), through `spidr.checkpoint`.

    The model standardises each utterance, pads and masks batches itself (batched == one at a time).
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

    def _options(self, wavs: Sequence[Tensor]) -> dict[str, Any]:
        # One forward for the whole batch: encode_batched has already bucketed it.
        return {"batch_samples": max(w.numel() for w in wavs) * len(wavs), "autocast": self.bf16}

    @torch.no_grad()
    def features(self, wavs: Sequence[Tensor], layer: int) -> list[Tensor]:
        self.validate(layer)
        outs = self.model.encode(self._to_device(wavs), [layer], **self._options(wavs))
        return [o[layer] for o in outs]

    @torch.no_grad()
    def codebook_probs(self, wavs: Sequence[Tensor], layer: int) -> list[Tensor]:
        self.validate(layer, "codebook")
        outs = self.model.codebook_predictions(self._to_device(wavs), [layer], **self._options(wavs))
        return [o[layer] for o in outs]


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EncoderConfigError(f"device={device!r} but CUDA is not available")
    return torch.device(device)


def get_encoder(spec: str | Mapping[str, Any] | EncoderSpec, device: str | torch.device = "cpu",
                precision: str = "auto") -> Encoder:
    """Load the encoder a spec names. precision: fp32 | bf16 (autocast, CUDA only) | auto (bf16 on CUDA)."""
    spec = EncoderSpec.parse(spec)
    device = resolve_device(device) if isinstance(device, str) else device
    if precision not in ("auto", "fp32", "bf16"):
        raise EncoderConfigError(f"precision={precision!r}; expected auto, fp32 or bf16")
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
        from spidr.config import from_dict

        model = from_dict({"kind": spec.kind, **train_config}).model
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


# ---------------------------------------------------------------------------------------------------------------
# Batched, chunked running


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
                   chunk_frames: int = 1500, context_frames: int = 250, batch_samples: int = 16_000 * 60,
                   max_batch: int = 64, progress: Callable[[float], None] | None = None) -> list[Tensor]:
    """Run `compute` (a batch of waveforms -> one (frames, ...) tensor each) over utterances of any length.

    Returns, per utterance, the concatenated core frames of its pieces on CPU: exactly frame_count_fn(len) frames.
    `progress` receives the seconds of audio finished after each batch.
    """
    pieces = [p for i, w in enumerate(wavs)
              for p in plan_pieces(i, int(w.numel()), hop=hop, window=window, chunk_frames=chunk_frames,
                                   context_frames=context_frames)]
    done: list[Tensor | None] = [None] * len(pieces)
    todo = [k for k, p in enumerate(pieces) if p.keep > 0]
    for batch in batches_of(todo, pieces, batch_samples, max_batch):
        outs = compute([wavs[pieces[k].utt][pieces[k].start: pieces[k].stop] for k in batch])
        for k, out in zip(batch, outs, strict=True):
            piece = pieces[k]
            expected = frame_count_fn(piece.stop - piece.start)
            if out.shape[0] != expected:
                raise RuntimeError(f"encoder returned {out.shape[0]} frames for {piece.stop - piece.start} samples, "
                                   f"expected {expected}")
            done[k] = out[piece.skip: piece.skip + piece.keep].cpu()
        if progress is not None:
            progress(sum(pieces[k].keep for k in batch) * hop / SAMPLE_RATE)
    results = []
    for i, w in enumerate(wavs):
        parts = [done[k] for k, p in enumerate(pieces) if p.utt == i and done[k] is not None]
        if not parts:
            raise BadAudioError(f"utterance {i}: {w.numel()} samples give no frame")
        results.append(torch.cat(parts))
    return results


# ---------------------------------------------------------------------------------------------------------------
# Corpus reading: shards of consecutive manifest rows, audio loaded ahead in threads, bad audio per policy


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
                        raise BadAudioError(f"{err} (utterance {ids[row]}; use --bad-audio skip to skip and count "
                                            "bad files)") from err
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


