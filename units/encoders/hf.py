"""Hugging Face wav2vec 2.0-family encoders (HuBERT, wav2vec 2.0, WavLM, data2vec-audio), batched with padding."""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from units.batching import pad
from units.config import EncoderConfigError
from units.encoders.base import Encoder


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
        except pickle.UnpicklingError as err:  # torch.load(weights_only=True) refused a pickled .bin
            found = re.search(r"GLOBAL (\S+)", str(err))
            raise EncoderConfigError(
                f"{name}: the model's pickled weights (.bin) hold Python objects that torch.load(weights_only=True) "
                f"refuses to build{f' ({found.group(1)})' if found else ''}, so they were not loaded and none of "
                "their code ran; use a model saved as model.safetensors (save_pretrained's default)") from None
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
        batch, lengths = pad(wavs)
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
            with self.inference():
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
