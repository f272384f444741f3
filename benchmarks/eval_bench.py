"""Evaluation throughput on synthetic data, printed as JSON: PNMI frames/s and the ABX wrapper's overhead.

Usage: python -m benchmarks.eval_bench [--utterances 1000] [--abx-files 6] [--dim 768] [--threads 2]

* unit_quality: eval.unit_quality.evaluate (Parquet + JSONL in, streaming bincount) against a per-frame Python
  count loop (the way SpidR's build_count_matrix builds its table), on the same files; same PNMI required.
* abx: eval.abx.run (item checks, memory-mapped lengths, filtered item file, the conditions) against a direct
  fastabx.zerospeech_abx call per condition on the same features; same error rates required.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from eval.abx import AbxConfig, run, slicing_env
from eval.benchmarks import read_phone_labels
from eval.unit_quality import UnitQualityConfig, evaluate, quality_from_counts
from units.format import UnitsWriter, iter_units

PHONES = [f"p{i}" for i in range(39)] + ["SIL"]


def write_units_and_labels(root: Path, utterances: int, vocab: int, rng: np.random.Generator) -> tuple[Path, Path]:
    """Utterances of ~6.8 s (the LibriSpeech dev mean): phones of 3-12 label frames, units noisy functions of them."""
    units_path, labels_path = root / "units.parquet", root / "phones.jsonl"
    lines = []
    with UnitsWriter(units_path, vocab_size=vocab, frame_rate=50) as w:
        for u in range(utterances):
            durations = rng.integers(3, 13, size=60)
            phones = np.repeat(rng.integers(len(PHONES), size=len(durations)), durations)
            n = len(phones) // 2
            clean = (phones[::2][:n] * 6 + rng.integers(6, size=n)) % vocab
            units = np.where(rng.random(n) < 0.3, rng.integers(vocab, size=n), clean)
            w.write(f"utt{u}", units)
            lines.append(json.dumps({"id": f"utt{u}", "phones": [PHONES[i] for i in phones]}) + "\n")
    labels_path.write_text("".join(lines))
    return units_path, labels_path


def python_loop_counts(units_path: Path, labels_path: Path, vocab: int) -> np.ndarray:
    labels = read_phone_labels(labels_path)
    counts: Counter[tuple[str, int]] = Counter()
    for row in iter_units(units_path):
        up = [int(u) for u in row["units"] for _ in range(2)]
        for phone, unit in zip(labels[row["id"]], up, strict=False):
            counts[(phone, unit)] += 1
    names = sorted({p for p, _ in counts})
    table = np.zeros((len(names), vocab), dtype=np.int64)
    for (p, u), c in counts.items():
        table[names.index(p), u] = c
    return table


def bench_unit_quality(root: Path, utterances: int, rng: np.random.Generator) -> dict:
    units_path, labels_path = write_units_and_labels(root, utterances, 256, rng)
    t0 = time.perf_counter()
    ours, details = evaluate(units_path, labels_path, UnitQualityConfig())
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    baseline = quality_from_counts(python_loop_counts(units_path, labels_path, 256))
    t_base = time.perf_counter() - t0
    assert abs(ours["pnmi"] - baseline["pnmi"]) < 1e-12, (ours["pnmi"], baseline["pnmi"])
    frames = details["aligned_frames"]
    return {"frames": frames, "pnmi": round(ours["pnmi"], 6), "seconds": round(t_ours, 3),
            "frames_per_second": round(frames / t_ours), "baseline_python_loop_seconds": round(t_base, 3),
            "speedup_vs_python_loop": round(t_base / t_ours, 2)}


def write_abx_corpus(root: Path, files: int, dim: int, rng: np.random.Generator) -> Path:
    """Per speaker-file 10 s of 50 Hz features (phone embedding + speaker offset + noise) and triphone items."""
    feats_dir = root / "feats"
    feats_dir.mkdir()
    emb = rng.normal(size=(8, dim))
    rows = []
    for s in range(4):
        offset = rng.normal(scale=0.5, size=dim)
        for f in range(files):
            uid = f"s{s}-f{f}"
            durations = rng.integers(3, 8, size=90)  # frames per phone, 10 s at most
            phones = rng.integers(len(emb), size=len(durations))
            frame_phone = np.repeat(phones, durations)[:500]
            x = emb[frame_phone] + offset + rng.normal(scale=1.5, size=(len(frame_phone), dim))
            torch.save(torch.tensor(x, dtype=torch.float32), feats_dir / f"{uid}.pt")
            ends = np.cumsum(durations) * 0.02
            for k in range(1, len(durations) - 1):
                if ends[k + 1] > len(frame_phone) * 0.02 - 0.02:
                    break
                onset, offset = (ends[k - 2] if k > 1 else 0.0), ends[k + 1]
                prev, phone, nxt = phones[k - 1], phones[k], phones[k + 1]
                rows.append(f"{uid} {onset:.4f} {offset:.4f} p{phone} p{prev} p{nxt} s{s}\n")
    item = root / "triphone.item"
    item.write_text("#file onset offset #phone prev-phone next-phone speaker\n" + "".join(rows))
    return item


def bench_abx(root: Path, files: int, dim: int, rng: np.random.Generator) -> dict:
    from fastabx import zerospeech_abx

    item = write_abx_corpus(root, files, dim, rng)
    t0 = time.perf_counter()
    doc = run(item, root / "abx.json", features=root / "feats", units_path=None, frame_rate=50, cfg=AbxConfig(),
              labels={})
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    direct = {}
    with slicing_env("fastabx"):
        for speaker in ("within", "across"):
            direct[speaker] = 100 * zerospeech_abx(item, root / "feats", max_size_group=10, max_x_across=5,
                                                   speaker=speaker, context="within", progress=False)
    t_direct = time.perf_counter() - t0
    ours = {m["conventions"]["speaker"]: m["value"] for m in doc["metrics"]}
    for speaker, value in direct.items():
        assert abs(ours[speaker] - value) < 1e-9, (speaker, ours[speaker], value)
    return {"items": doc["details"]["items_used"], "dim": dim, "abx_within": round(ours["within"], 4),
            "abx_across": round(ours["across"], 4), "seconds": round(t_ours, 3),
            "direct_fastabx_seconds": round(t_direct, 3), "overhead_ratio": round(t_ours / t_direct, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=1000, help="PNMI utterances (LibriSpeech dev: 5567)")
    parser.add_argument("--abx-files", type=int, default=6, help="10 s files per speaker (4 speakers)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "uq").mkdir()
        (Path(tmp) / "abx").mkdir()
        result = {"device": "cpu", "threads": args.threads,
                  "unit_quality": bench_unit_quality(Path(tmp) / "uq", args.utterances, rng),
                  "abx_triphone": bench_abx(Path(tmp) / "abx", args.abx_files, args.dim, rng)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
