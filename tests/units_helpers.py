"""Builders shared by the tests of the units stage: synthetic audio corpora and tiny randomly initialised encoders."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from data.audio import SAMPLE_RATE, write_wav
from data.manifest import build_manifest


def speechlike(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Noise bursts and gliding tones: enough structure for k-means to find clusters, nothing to download."""
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = rng.uniform(100, 300) * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    tone = np.sin(2 * np.pi * np.cumsum(f0) / SAMPLE_RATE)
    envelope = (np.sin(2 * np.pi * rng.uniform(2, 6) * t) > 0).astype(np.float32)
    wav = 0.3 * tone * envelope + 0.05 * rng.standard_normal(n)
    return wav.astype(np.float32)


def make_corpus(root: Path, durations: list[float], seed: int = 0) -> Path:
    """Write one wav per duration under root/wav/spk{i%2}/ and return the manifest path."""
    rng = np.random.default_rng(seed)
    for i, seconds in enumerate(durations):
        write_wav(root / "wav" / f"spk{i % 2}" / f"utt{i:03d}.wav", speechlike(seconds, rng))
    manifest = root / "manifest.tsv"
    build_manifest(root / "wav", manifest, ids="stem", log=io.StringIO())  # features (ABX) are named by stem
    return manifest


def make_hf_hubert(path: Path, *, norm: str = "group", layers: int = 3, seed: int = 0) -> Path:
    """A tiny randomly initialised HuBERT saved with save_pretrained (no hub download).

    norm 'group': HuBERT-base style (GroupNorm front end, post-LN transformer); 'layer': HuBERT-large style.
    """
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    cfg = HubertConfig(
        hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer",
    )
    HubertModel(cfg).eval().save_pretrained(path)
    return path


def make_spidr(path: Path, preset: str = "tiny", kind: str = "spidr", seed: int = 0) -> Path:
    """A randomly initialised SpidR / DinoSR checkpoint in our format."""
    from spidr.checkpoint import save_model
    from spidr.model import build_model

    save_model(build_model(preset, kind=kind, seed=seed), path)
    return path
