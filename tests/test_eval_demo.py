"""Every eval entry point on the real demo layouts, chained as the DAG chains them, ending in the report.

The experiment is a real (if weak) baseline built inside the test so that eval/ is checked without the other
stages: Kaldi MFCCs stacked to 50 Hz, k-means units, and a bigram unit LM with add-one smoothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from data.audio import load_audio
from eval import abx, report, slm21, storycloze, unit_quality
from units.format import UnitsWriter

K = 8


def mfcc_50hz(wav: Path) -> torch.Tensor:
    """13 MFCCs at 100 Hz (frame j centred near j * 10 ms), pairs averaged: frame i centred at (i + 1/2) * 20 ms."""
    audio = torch.from_numpy(load_audio(wav))[None]
    feats = torchaudio.compliance.kaldi.mfcc(audio, num_ceps=13, snip_edges=False, dither=0.0)
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-5)
    n = feats.shape[0] // 2
    return feats[: 2 * n].view(n, 2, -1).mean(1)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centroids = x[rng.choice(len(x), k, replace=False)]
    for _ in range(iters):
        assign = ((x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        centroids = np.stack([x[assign == j].mean(0) if (assign == j).any() else centroids[j] for j in range(k)])
    return centroids


def units_of(feats: torch.Tensor, centroids: np.ndarray) -> np.ndarray:
    return ((feats.numpy()[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)


def dedup(units: np.ndarray) -> np.ndarray:
    return units[np.r_[True, units[1:] != units[:-1]]]


def bigram_scores(train: list[np.ndarray], items: dict[str, np.ndarray], out: Path) -> None:
    """Mean per-token log-probability under an add-one bigram LM (with a start symbol), id<TAB>score lines."""
    counts = np.ones((K + 1, K))
    for seq in train:
        prev = K
        for u in seq:
            counts[prev, u] += 1
            prev = u
    logp = np.log(counts / counts.sum(1, keepdims=True))
    lines = []
    for uid, seq in items.items():
        prevs = np.r_[K, seq[:-1]]
        lines.append(f"{uid}\t{float(logp[prevs, seq].mean())!r}\n")
    out.write_text("".join(lines))
    (out.parent / (out.name + ".json")).write_text(json.dumps({"normalisation": "mean"}))


def mfcc_kmeans_units(demo_corpus: Path, units_path: Path) -> tuple[dict[str, torch.Tensor], list[torch.Tensor],
                                                                     np.ndarray]:
    """MFCC k-means (K, fit on the training set) units of the demo's dev utterances, written to `units_path`;
    returns the dev features by id, the training features and the centroids."""
    dev = {p.stem: mfcc_50hz(p) for p in sorted((demo_corpus / "dev" / "wav").glob("*.wav"))}
    train = [mfcc_50hz(p) for p in sorted((demo_corpus / "train" / "wav").glob("*.wav"))]
    centroids = kmeans(torch.cat(train).numpy(), K)
    with UnitsWriter(units_path, vocab_size=K, frame_rate=50) as w:
        for uid, f in dev.items():
            w.write(uid, units_of(f, centroids))
    return dev, train, centroids


@pytest.mark.slow
def test_eval_chain_on_demo_layouts(demo_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    feat_dir = tmp_path / "feats"
    feat_dir.mkdir()
    units_path = tmp_path / "units.parquet"
    dev, train, centroids = mfcc_kmeans_units(demo_corpus, units_path)
    for uid, f in dev.items():
        torch.save(f, feat_dir / f"{uid}.pt")

    # What the workflow passes (eval.config job JSON): the units config, from which every metric takes its labels.
    units = {"encoder": {"kind": "mfcc"}, "layer": 0, "quantizer": "kmeans", "k": K, "fit": {}, "name": "kmeans",
             "encoder_name": "mfcc"}
    units_job = json.dumps({"experiment": {"units": units}})
    metrics = []
    for kind in ("triphone", "phoneme"):
        item = demo_corpus / "dev" / f"{kind}.item"
        out = tmp_path / f"abx-{kind}-units.json"
        abx.main(["--item", str(item), "--units", str(units_path), "--out", str(out), "--config", units_job])
        metrics.append(out)
    cont = {"encoder": {"kind": "mfcc"}, "layer": 0, "name": "continuous", "encoder_name": "mfcc"}
    out = tmp_path / "abx-triphone-feats.json"
    abx.main(["--item", str(demo_corpus / "dev" / "triphone.item"), "--features", str(feat_dir), "--out", str(out),
              "--frame-rate", "50", "--config", json.dumps({"experiment": {"units": cont}})])
    metrics.append(out)
    feat_abx = json.loads(out.read_text())
    assert all(0 <= m["value"] < 50 for m in feat_abx["metrics"])  # MFCCs beat chance on phones
    out = tmp_path / "unit-quality.json"
    unit_quality.main(["--units", str(units_path), "--phones", str(demo_corpus / "dev" / "phones_100hz.jsonl"),
                       "--out", str(out), "--config", units_job])
    metrics.append(out)
    pnmi = {m["metric"]: m["value"] for m in json.loads(out.read_text())["metrics"]}
    assert 0 < pnmi["pnmi"] < 1 and pnmi["active_units"] <= K

    train_units = [dedup(units_of(f, centroids)) for f in train]
    lm_job = json.dumps({"experiment": {"units": units, "lm": "bigram", "name": "mfcc-bigram"}})
    for task in ("lexical", "syntactic"):
        folder = demo_corpus / "sLM21" / task / "dev"
        scores = tmp_path / f"{task}.tsv"
        bigram_scores(train_units, {p.stem: dedup(units_of(mfcc_50hz(p), centroids))
                                    for p in sorted(folder.glob("*.wav"))}, scores)
        out = tmp_path / f"{task}.json"
        slm21.main([task, "--gold", str(folder / "gold.csv"), "--scores", str(scores), "--out", str(out),
                    "--submission", str(tmp_path / "submission"), "--config", lm_job])
        metrics.append(out)
        lines = (tmp_path / "submission" / task / "dev.txt").read_text().splitlines()
        assert {line.split(" ")[0] for line in lines} == {p.stem for p in folder.glob("*.wav")}
    for task in ("sSC", "tSC"):
        folder = demo_corpus / "storycloze" / task
        scores = tmp_path / f"{task}.tsv"
        bigram_scores(train_units, {p.stem: dedup(units_of(mfcc_50hz(p), centroids))
                                    for p in sorted(folder.glob("*.wav"))}, scores)
        out = tmp_path / f"{task}.json"
        storycloze.main(["--dir", str(folder), "--scores", str(scores), "--out", str(out), "--config", lm_job])
        metrics.append(out)

    report.main(["--metrics", *map(str, metrics), "--out", str(tmp_path / "report")])
    report.main(["--print", str(tmp_path / "report")])
    printed = capsys.readouterr().out
    assert "| mfcc | kmeans | kmeans | 0 | 8 | bigram |" in printed  # one row: units metrics joined to the LM metrics
    assert "| mfcc | continuous | continuous | 0 | – | – |" in printed
    for name in ("table.tex", "table.csv", "metric_vs_layer.png"):
        assert (tmp_path / "report" / name).is_file()
