"""A miniature copy of the paper recipe's data tree, for rehearsing configs/paper.yaml end to end in minutes.

Usage: python -m pipeline.rehearsal --out DIR [--threads N] [--seed S]

Every file configs/paper.yaml names under its `data_root` is written below DIR, in the real data's layout, from
data.demo's flite corpus (its speech, sLM21 and StoryCloze sets are reused, not re-synthesised differently):

    LibriSpeech/{train-960,dev-clean,dev-other}/<speaker>/<chapter>/<speaker>-<chapter>-<NNNN>.flac  (+ .trans.txt)
    librilight-vad/all/<speaker>/<book>/<file>_<NNNN>.flac          Libri-Light after cut_by_vad.py
    sLM21/{lexical,syntactic}/{dev,test}/*.wav + gold.csv           ZeroSpeech 2021 sLM21
    SpokenStoryCloze/{sSC,tSC}/*.wav                                 SpokenStoryCloze
    abx/<set>/manifest.tsv        built with the README's command (python -m data.manifest ... ids: stem)
    abx/{triphone,phoneme}-<set>.item, abx/phoneme-<set>-100hz.jsonl  from the utterances' flite alignments
    checkpoints/spidr_base.pt + config.json                          a tiny SpidR in the official release layout
    checkpoints/dinosr.ckpt                                          a tiny DinoSR in the fairseq checkpoint layout
    huggingface/hub/models--<org>--<name>/                           tiny HuBERT / wav2vec 2.0 / WavLM, hub-cache
                                                                     layout (HF_HUB_CACHE=DIR/huggingface/hub)

The encoders are built from configs with random weights (base depth, tiny width), no download. The Hugging Face
ones are written as a filled hub cache under the paper's model names, so the recipe reads them unchanged with
HF_HUB_OFFLINE=1, as on offline compute nodes. DIR/info.json is written last (its presence means complete).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import soundfile as sf

from common.io import atomic_write_json, atomic_write_text, provenance
from data.audio import SAMPLE_RATE
from data.config import DemoConfig

# data.demo sizes: enough utterances that 16 pretraining ranks each get data, few enough to synthesise in seconds.
DEMO = {"train_sentences": 48, "train_voices_per_sentence": 2, "dev_sentences": 6, "lexical_pairs": 4,
        "syntactic_pairs": 6, "storycloze_stories": 3}
# LibriSpeech-style numeric speaker ids for flite's voices.
SPEAKERS = {"slt": 103, "awb": 1034, "rms": 1040, "kal16": 1069}
# The paper's Hugging Face encoders: (model name, transformers config class, model class).
HF_MODELS = (("facebook/hubert-base-ls960", "HubertConfig", "HubertModel"),
             ("facebook/wav2vec2-base", "Wav2Vec2Config", "Wav2Vec2Model"),
             ("microsoft/wavlm-base", "WavLMConfig", "WavLMModel"))
HF_REVISION = "0" * 40  # the snapshot's commit hash in the hub cache (any 40 hex digits)
# Base depth (12 layers, codebook heads on 5..12, so every paper layer exists), tiny width.
TINY_MODEL = {"embed_dim": 32, "num_layers": 12, "num_heads": 2, "ffn_dim": 64, "num_codebooks": 8,
              "codebook_size": 16, "pos_conv_kernel": 16, "pos_conv_groups": 4, "pos_conv_depth": 2,
              "conv_layers": [[16, 10, 5]] + [[16, 3, 2]] * 4 + [[16, 2, 2]] * 2}


def _flac(src: Path, dst: Path) -> None:
    audio, rate = sf.read(str(src), dtype="float32")
    if rate != SAMPLE_RATE:
        raise RuntimeError(f"{src}: {rate} Hz, expected {SAMPLE_RATE}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(dst), audio, SAMPLE_RATE, format="FLAC")


def librispeech_tree(rows: Sequence[tuple[str, str, str]], root: Path, first_chapter: int) -> dict[str, str]:
    """Write (demo id, wav path, text) rows as `speaker/chapter/speaker-chapter-NNNN.flac` + `.trans.txt` (one
    chapter per speaker); returns demo id -> LibriSpeech utterance id."""
    by_speaker: dict[int, list[tuple[str, str, str]]] = defaultdict(list)
    for uid, path, text in rows:
        by_speaker[SPEAKERS[uid.split("-", 1)[0]]].append((uid, path, text))
    ids: dict[str, str] = {}
    for speaker, utts in sorted(by_speaker.items()):
        chapter = first_chapter + speaker
        folder = root / str(speaker) / str(chapter)
        lines = []
        for n, (uid, path, text) in enumerate(utts):
            new = f"{speaker}-{chapter}-{n:04d}"
            _flac(Path(path), folder / f"{new}.flac")
            ids[uid] = new
            lines.append(f"{new} {text.upper()}\n")
        atomic_write_text(folder / f"{speaker}-{chapter}.trans.txt", "".join(lines))
    return ids


def librilight_tree(rows: Sequence[tuple[str, str, str]], root: Path) -> None:
    """cut_by_vad.py's output layout: `<speaker>/<book>/<file>_<NNNN>.flac`, a few pieces per original file."""
    for n, (uid, path, _) in enumerate(rows):
        speaker = SPEAKERS[uid.split("-", 1)[0]]
        _flac(Path(path), root / str(speaker) / f"book{speaker}" / f"recording_{n // 4:03d}_{n % 4:04d}.flac")


def remap_items(src: Path, dst: Path, ids: dict[str, str]) -> int:
    """An ABX item file restricted to the utterances in `ids`, renamed, speaker = the LibriSpeech speaker."""
    lines = src.read_text().splitlines()
    out = [lines[0]]
    for line in lines[1:]:
        parts = line.split(" ")
        if parts[0] in ids:
            parts[0] = ids[parts[0]]
            parts[-1] = parts[0].split("-", 1)[0]
            out.append(" ".join(parts))
    atomic_write_text(dst, "\n".join(out) + "\n")
    return len(out) - 1


def remap_phones(src: Path, dst: Path, ids: dict[str, str]) -> None:
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
    atomic_write_text(dst, "".join(json.dumps({"id": ids[r["id"]], "phones": r["phones"]}) + "\n"
                                   for r in rows if r["id"] in ids))


def readme_manifest(root: Path, out: Path) -> None:
    """The ABX manifest as README.md / configs/paper.yaml tell users to build it (data.manifest, stem ids)."""
    config = json.dumps({"ext": ["flac"], "speaker": "dir", "ids": "stem"})
    done = subprocess.run([sys.executable, "-m", "data.manifest", str(root), str(out), "--config", config],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"python -m data.manifest {root} {out} failed: {done.stderr.strip()[-2000:]}")


# ---------------------------------------------------------------------------------------------------------------
# Encoders


def _model_config(kind: str) -> Any:  # spidr.config.ModelConfig (torch is imported late)
    from spidr.config import TrainConfig

    model = dict(TINY_MODEL)
    if kind == "dinosr":  # what the fairseq layout can hold: post-LN, q/k/v biases, layer-norm front end
        model.update(extractor_mode="layer_norm", qkv_bias=True)
    return TrainConfig.from_dict({"kind": kind, "preset": "tiny", "model": model}).model


def spidr_release(path: Path, seed: int) -> None:
    """A tiny SpidR in the official release layout ({"model": state_dict} + config.json beside it)."""
    from spidr.checkpoint import export_official
    from spidr.model import build_model

    export_official(build_model(_model_config("spidr"), kind="spidr", seed=seed), path, write_config=True)


def fairseq_dinosr_dict(model: Any) -> dict:  # model: spidr.model.DinoSR
    """Our DinoSR in the original release's fairseq checkpoint layout (what spidr.checkpoint converts from)."""
    from spidr.checkpoint import _FAIRSEQ_LAYER, _FAIRSEQ_NAMES
    from spidr.config import to_jsonable

    ours_to_fairseq_layer = {v: k for k, v in _FAIRSEQ_LAYER.items()}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def transformer(prefix: str) -> dict:
        out = {}
        for key, value in state.items():
            if not key.startswith(prefix + "."):
                continue
            rest = key[len(prefix) + 1:]
            if m := re.fullmatch(r"pos_conv_embed\.convs\.(\d+)\.(weight|bias)", rest):
                out[f"pos_conv.{m[1]}.0.{m[2]}"] = value
            elif rest in ("layer_norm.weight", "layer_norm.bias"):
                out[rest] = value
            elif m := re.fullmatch(r"layers\.(\d+)\.attention\.qkv\.(weight|bias)", rest):
                for name, part in zip("qkv", value.chunk(3, 0), strict=True):
                    out[f"layers.{m[1]}.self_attn.{name}_proj.{m[2]}"] = part.clone()
            elif m := re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", rest):
                out[f"layers.{m[1]}.{ours_to_fairseq_layer[m[2]]}.{m[3]}"] = value
            else:
                raise KeyError(f"no fairseq name for {key}")
        return out

    fairseq: dict = {f"encoder.{k}": v for k, v in transformer("student").items()}
    for key, value in state.items():
        if m := re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(conv|layer_norm)\.(weight|bias)", key):
            fairseq[f"feature_extractor.conv_layers.{m[1]}.{'0' if m[2] == 'conv' else '2.1'}.{m[3]}"] = value
        elif m := re.fullmatch(r"feature_projection\.(layer_norm|projection)\.(weight|bias)", key):
            fairseq[f"{'layer_norm' if m[1] == 'layer_norm' else 'post_extract_proj'}.{m[2]}"] = value
        elif key == "mask_embedding":
            fairseq["mask_emb"] = value
        elif m := re.fullmatch(r"heads\.(\d+)\.0\.(weight|bias)", key):
            fairseq[f"heads.{m[1]}.{m[2]}"] = value
        elif m := re.fullmatch(r"codebooks\.(\d+)\.(codebook|counts)", key):
            fairseq[f"_codebook{'_cnts' if m[2] == 'counts' else ''}{m[1]}"] = value
    fairseq["_ema"] = {k: v for k, v in transformer("teacher").items() if not k.startswith("pos_conv")}
    cfg = to_jsonable(dataclasses.asdict(model.cfg))
    model_cfg = {theirs: cfg[ours] for theirs, ours in _FAIRSEQ_NAMES.items()}
    model_cfg.update(_name="dinosr", extractor_mode="layer_norm", layer_norm_first=False, discrete=True)
    return {"cfg": {"model": model_cfg, "common": {"seed": 1}}, "model": fairseq, "optimizer_history": [],
            "extra_state": {}}


def dinosr_fairseq(path: Path, seed: int) -> None:
    """A tiny DinoSR as the original release ships it (fairseq), checked to load back to the same weights."""
    import torch

    from spidr.checkpoint import atomic_torch_save, load_model
    from spidr.model import build_model

    model = build_model(_model_config("dinosr"), kind="dinosr", seed=seed)
    atomic_torch_save(fairseq_dinosr_dict(model), path)
    back = load_model(path).state_dict()
    wrong = [k for k, v in model.state_dict().items() if k != "current_step" and not torch.equal(v, back[k])]
    if wrong:
        raise RuntimeError(f"{path}: the fairseq layout does not load back to the same weights ({wrong[:4]})")


def hf_cache(hub: Path, seed: int) -> list[str]:
    """Tiny HuBERT / wav2vec 2.0 / WavLM (12 layers, width 32) as a filled Hugging Face hub cache, under the paper's
    model names; returns the names."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    names = []
    for name, config_cls, model_cls in HF_MODELS:
        torch.manual_seed(seed)
        config = getattr(transformers, config_cls)(
            hidden_size=32, num_hidden_layers=12, num_attention_heads=2, intermediate_size=64,
            conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            feat_extract_norm="group", do_stable_layer_norm=False)
        snapshot = hub / f"models--{name.replace('/', '--')}" / "snapshots" / HF_REVISION
        getattr(transformers, model_cls)(config).save_pretrained(snapshot)
        extractor = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                                          do_normalize=False, return_attention_mask=False)
        extractor.save_pretrained(snapshot)
        atomic_write_text(snapshot.parent.parent / "refs" / "main", HF_REVISION)
        names.append(name)
    return names


# ---------------------------------------------------------------------------------------------------------------


def generate(out: Path, threads: int = 2, seed: int = 0) -> dict:
    """Write the whole tree below `out` (see the module docstring); info.json last."""
    from data.demo import generate as demo_generate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for owned in ("LibriSpeech", "librilight-vad", "sLM21", "SpokenStoryCloze", "abx", "checkpoints", "huggingface",
                  "info.json"):  # no stale files from an earlier run
        target = out / owned
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".demo-") as tmp:
        demo = Path(tmp)
        demo_generate(demo, DemoConfig.from_dict({**DEMO, "seed": seed}), threads=threads)
        text = {f"{v}-train{n:04d}": line for n, line in
                enumerate((demo / "train/text.txt").read_text().splitlines()) for v in SPEAKERS}
        train = pd.read_csv(demo / "train/manifest.tsv", sep="\t")
        dev = pd.read_csv(demo / "dev/manifest.tsv", sep="\t")
        resolve = lambda p: str(p) if Path(p).is_absolute() else str(demo / "train" / p)  # noqa: E731
        rows = [(r.id, resolve(r.path), text.get(r.id, "")) for r in train.itertuples()]
        # Half of the training speech is LibriSpeech (pretraining, k-means), half Libri-Light (the unit LMs).
        librispeech_tree(rows[0::2], out / "LibriSpeech/train-960", first_chapter=100)
        librilight_tree(rows[1::2], out / "librilight-vad/all")
        counts = {"train-960": len(rows[0::2]), "librilight-vad/all": len(rows[1::2])}
        # The demo's dev utterances: the first half of each voice's sentences is dev-clean, the second dev-other.
        dev_rows = [(r.id, str(Path(r.path) if Path(r.path).is_absolute() else demo / "dev" / r.path), "")
                    for r in dev.itertuples()]
        half = len(dev_rows) // 2
        items = {}
        for subset, part, chapter in (("dev-clean", dev_rows[:half], 200), ("dev-other", dev_rows[half:], 300)):
            ids = librispeech_tree(part, out / "LibriSpeech" / subset, first_chapter=chapter)
            counts[subset] = len(ids)
            readme_manifest(out / "LibriSpeech" / subset, out / "abx" / subset / "manifest.tsv")
            for kind in ("triphone", "phoneme"):
                items[f"{kind}-{subset}"] = remap_items(demo / f"dev/{kind}.item", out / f"abx/{kind}-{subset}.item",
                                                        ids)
            remap_phones(demo / "dev/phones_100hz.jsonl", out / f"abx/phoneme-{subset}-100hz.jsonl", ids)
        shutil.copytree(demo / "sLM21", out / "sLM21")
        shutil.copytree(demo / "storycloze", out / "SpokenStoryCloze")
    (out / "checkpoints").mkdir()
    spidr_release(out / "checkpoints/spidr_base.pt", seed)
    dinosr_fairseq(out / "checkpoints/dinosr.ckpt", seed)
    hf = hf_cache(out / "huggingface/hub", seed)
    info = {"utterances": counts, "abx_items": items, "hf_models": hf,
            "env": {"HF_HUB_CACHE": str((out / "huggingface/hub").resolve()), "HF_HUB_OFFLINE": "1"},
            **provenance({"demo": DEMO, "seed": seed})}
    atomic_write_json(out / "info.json", info)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the data root to write (configs/paper.yaml's "
                        "data_root: --config data_root=OUT)")
    parser.add_argument("--threads", type=int, default=2, help="parallel flite processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    info = generate(args.out, args.threads, args.seed)
    print(json.dumps({"utterances": info["utterances"], "abx_items": info["abx_items"], "env": info["env"]}))


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
