"""Codebook diagnostics of a SpidR / DinoSR checkpoint: how its teacher and student label a corpus, layer by layer.

Usage:
    python -m eval.diagnose --checkpoint CKPT.pt --manifest DEV.tsv [--phones dev/phones_100hz.jsonl]
        [--max-utterances 200] [--out REPORT.json]

For each codebook layer, on clean input (no masking, no update):
  * targets: effective rank of the teacher's instance-normalised targets (exp of the entropy of the normalised
    squared singular values), and of the teacher's nearest-codeword assignments (what the student is trained on):
    active codewords, perplexity, the fraction of consecutive frames with the same label, PNMI with phones;
  * heads: the same for the student head's argmax (the paper's "codebook" units).
Telling signs: a handful of active codewords (codebook collapse), targets whose labels change at nearly every frame
(a teacher the student cannot predict yet), heads with one active unit (the student predicts the marginal).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.io import atomic_write_json, provenance
from common.runtime import perplexity
from data.audio import load_audio
from data.manifest import read_manifest
from eval.benchmarks import read_phone_labels
from eval.unit_quality import CountAccumulator, quality_from_counts
from spidr.checkpoint import load_model
from spidr.model import DinoSR, standardize


def label_stats(labels: list[np.ndarray], size: int, phones: dict[str, list[str]] | None, ids: list[str],
                label_rate: float = 100.0, frame_rate: float = 50.0) -> dict[str, float]:
    """Active labels, perplexity, same-as-previous-frame rate and (with phones) PNMI of per-utterance labels."""
    counts = np.bincount(np.concatenate(labels), minlength=size)
    same = sum(int((lab[1:] == lab[:-1]).sum()) for lab in labels)
    pairs = sum(max(0, len(lab) - 1) for lab in labels)
    out = {"active": int((counts > 0).sum()), "perplexity": float(perplexity(counts)),
           "same_as_previous": same / pairs if pairs else float("nan")}
    if phones is not None:
        acc = CountAccumulator(size, round(label_rate / frame_rate), max_length_diff=2)
        for uid, lab in zip(ids, labels, strict=True):
            if uid in phones:
                acc.add(uid, lab, phones[uid])
        out["pnmi"] = quality_from_counts(acc.counts()[0])["pnmi"]
    return out


def effective_rank(x: np.ndarray) -> float:
    """Perplexity of the normalised squared singular values of the centred rows."""
    return float(perplexity(np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2))


@torch.no_grad()
def diagnose(model: DinoSR, wavs: list[torch.Tensor], ids: list[str],
             phones: dict[str, list[str]] | None = None) -> dict[int, dict[str, Any]]:
    """Per codebook layer: target rank and the label statistics of the teacher's assignments and the heads."""
    if model.teacher is None:
        raise ValueError("diagnostics need the teacher: load the model with teacher=True")
    model.eval()
    layers = model.codebook_layers
    targets = {lay: [] for lay in layers}
    assigned = {lay: [] for lay in layers}
    heads = {lay: [] for lay in layers}
    device = model.mask_embedding.device  # also a model being trained on a GPU (eval.curves)
    for wav in wavs:
        wav = standardize(wav.to(device))[None]
        feats = model.features(wav)
        every_frame = torch.arange(feats.shape[1], device=device).unsqueeze(0)
        teacher = model.teacher_targets(feats, every_frame)  # exactly what training assigns, for every frame
        probs = {lay: p[0] for lay, p in model.head_probs(wav, layers).items()}
        for k, lay in enumerate(layers):
            targets[lay].append(teacher[k].cpu().numpy())
            assigned[lay].append(model.codebooks[k].assign(teacher[k]).cpu().numpy())
            heads[lay].append(probs[lay].argmax(-1).cpu().numpy())
    size = model.codebook_size
    return {
        lay: {"target_effective_rank": effective_rank(np.concatenate(targets[lay])),
              "teacher_assignments": label_stats(assigned[lay], size, phones, ids),
              "head_argmax": label_stats(heads[lay], size, phones, ids)}
        for lay in layers
    }


def _summary(d: dict[str, float]) -> str:
    pnmi = f" pnmi {d['pnmi']:.3f}" if "pnmi" in d else ""
    return f"{d['active']:4d} active, ppl {d['perplexity']:6.1f}, same {d['same_as_previous']:.2f}{pnmi}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--phones", default=None, help="100 Hz phone labels (JSONL), for PNMI")
    parser.add_argument("--max-utterances", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    model = load_model(args.checkpoint, teacher=True)
    rows = read_manifest(args.manifest).head(args.max_utterances)
    wavs = [torch.from_numpy(load_audio(path)) for path in rows["path"]]
    phones = read_phone_labels(Path(args.phones)) if args.phones else None
    report = diagnose(model, wavs, list(rows["id"]), phones)
    for lay, r in report.items():
        print(f"layer {lay}: target rank {r['target_effective_rank']:6.1f}"
              f" | teacher: {_summary(r['teacher_assignments'])} | heads: {_summary(r['head_argmax'])}",
              file=sys.stderr)
    if args.out:
        atomic_write_json(args.out, {"layers": {str(k): v for k, v in report.items()},
                                     "inputs": {"checkpoint": args.checkpoint, "manifest": args.manifest,
                                                "phones": args.phones, "utterances": len(wavs)},
                                     "provenance": provenance(None)})


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
