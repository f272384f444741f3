"""Extraction end to end: a tiny HF HuBERT and a tiny SpidR, both quantizers, features for ABX, resumption,
bad audio, the text export and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from data.audio import BadAudioError, load_audio
from data.manifest import read_manifest
from spidr.model import standardize
from tests.units_helpers import make_corpus, make_hf_hubert, make_spidr
from units.config import RunOptions, frame_count
from units.encoders import get_encoder
from units.extract import extract_features, extract_units, main
from units.format import read_units, read_units_meta
from units.kmeans import KMeansError, fit_from_corpus

RUN = RunOptions(progress=False, workers=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), [1.3, 0.6, 2.1, 0.9, 1.7, 0.4, 1.1])


@pytest.fixture(scope="module")
def hubert(tmp_path_factory):
    return str(make_hf_hubert(tmp_path_factory.mktemp("hf") / "hubert", norm="group", layers=2))


@pytest.fixture(scope="module")
def spidr_ckpt(tmp_path_factory):
    return str(make_spidr(tmp_path_factory.mktemp("spidr") / "tiny.pt"))


def wavs_of(manifest) -> tuple[list[str], list[torch.Tensor]]:
    table = read_manifest(manifest)
    return table["id"].tolist(), [torch.from_numpy(load_audio(p)) for p in table["path"]]


def test_tiny_hf_hubert_kmeans_end_to_end(tmp_path, corpus, hubert):
    """Fit k-means on layer 2 of a tiny HuBERT loaded from a save_pretrained dir, quantise, check by hand."""
    spec = {"kind": "hf", "model": hubert}
    km = fit_from_corpus(spec, 2, corpus, k=6, seed=0, max_frames=300, out=tmp_path / "km.npz", run=RUN)
    summary = extract_units(spec, 2, "kmeans", corpus, tmp_path / "u.parquet", kmeans=tmp_path / "km.npz", run=RUN)
    units, meta = read_units(tmp_path / "u.parquet"), read_units_meta(tmp_path / "u.parquet")
    assert meta["vocab_size"] == 6 and meta["frame_rate"] == 50.0 and not meta["deduplicated"]
    config = meta["provenance"]["config"]
    assert config["encoder"] == spec and config["layer"] == 2 and config["quantizer"] == "kmeans"
    assert len(config["kmeans_sha256"]) == 64 and "code_version" in meta["provenance"]
    ids, wavs = wavs_of(corpus)
    assert units["id"].tolist() == ids and summary["utterances"] == len(ids)
    enc = get_encoder(spec)
    for wav, got in zip(wavs, units["units"], strict=True):
        feats = enc.features([wav], 2)[0].numpy().astype(np.float64)
        by_hand = ((feats[:, None] - km.centroids[None].astype(np.float64)) ** 2).sum(-1).argmin(1)
        assert len(got) == frame_count(wav.numel())
        np.testing.assert_array_equal(got, by_hand)
    # A k-means of another layer is refused, naming both.
    with pytest.raises(KMeansError, match=r"layer 2, but the units ask for .* layer 1"):
        extract_units(spec, 1, "kmeans", corpus, tmp_path / "v.parquet", kmeans=tmp_path / "km.npz", run=RUN)


def test_codebook_units_are_argmax_of_codebook_predictions(tmp_path, corpus, spidr_ckpt):
    spec = {"kind": "spidr", "checkpoint": spidr_ckpt}
    enc = get_encoder(spec)
    layer = enc.codebook_layers[-1]
    extract_units(spec, layer, "codebook", corpus, tmp_path / "u.parquet", run=RUN)
    units = read_units(tmp_path / "u.parquet")
    assert read_units_meta(tmp_path / "u.parquet")["vocab_size"] == enc.codebook_size
    _, wavs = wavs_of(corpus)
    probs = [enc.model.head_probs(standardize(w)[None], [layer])[layer][0] for w in wavs]
    for got, p in zip(units["units"], probs, strict=True):
        np.testing.assert_array_equal(got, p.argmax(-1).numpy())
    with pytest.raises(ValueError, match="codebook heads only on layers"):
        extract_units(spec, 1, "codebook", corpus, tmp_path / "w.parquet", run=RUN)


def test_batched_equals_one_at_a_time_units(tmp_path, corpus, hubert):
    spec = {"kind": "hf", "model": hubert}
    fit_from_corpus(spec, 1, corpus, k=8, seed=1, max_frames=400, out=tmp_path / "km.npz", run=RUN)
    one = RunOptions(progress=False, batch_seconds=0.1, max_batch=1)
    many = RunOptions(progress=False, batch_seconds=100, max_batch=64, shard_hours=0.0005)
    extract_units(spec, 1, "kmeans", corpus, tmp_path / "a.parquet", kmeans=tmp_path / "km.npz", run=one)
    extract_units(spec, 1, "kmeans", corpus, tmp_path / "b.parquet", kmeans=tmp_path / "km.npz", run=many)
    a, b = read_units(tmp_path / "a.parquet"), read_units(tmp_path / "b.parquet")
    assert a["id"].tolist() == b["id"].tolist()
    for x, y in zip(a["units"], b["units"], strict=True):
        np.testing.assert_array_equal(x, y)


def test_features_for_abx_are_resumable(tmp_path, corpus, spidr_ckpt):
    spec = {"kind": "spidr", "checkpoint": spidr_ckpt}
    out = tmp_path / "feats"
    extract_features(spec, 2, corpus, out, run=RUN)
    ids, wavs = wavs_of(corpus)
    enc = get_encoder(spec)
    for uid, wav in zip(ids, wavs, strict=True):
        feats = torch.load(out / f"{uid}.pt", weights_only=True)
        assert feats.dtype == torch.float32 and feats.shape == (frame_count(wav.numel()), enc.dim)
        torch.testing.assert_close(feats, enc.features([wav], 2)[0], rtol=0, atol=1e-5)
    success = json.loads((out / "_SUCCESS.json").read_text())
    assert success["utterances"] == len(ids) and success["config"]["layer"] == 2 and "code_version" in success

    # Resume: only the missing file is computed again; the others are left untouched.
    mtimes = {uid: (out / f"{uid}.pt").stat().st_mtime_ns for uid in ids}
    (out / f"{ids[3]}.pt").unlink()
    extract_features(spec, 2, corpus, out, run=RUN)
    assert (out / f"{ids[3]}.pt").is_file()
    assert all((out / f"{u}.pt").stat().st_mtime_ns == mtimes[u] for u in ids if u != ids[3])

    # Another config in the same directory: the stale files are replaced, not mixed in.
    extract_features(spec, 3, corpus, out, run=RUN)
    torch.testing.assert_close(torch.load(out / f"{ids[0]}.pt"), enc.features([wavs[0]], 3)[0], rtol=0, atol=1e-5)
    probs_dir = tmp_path / "probs"
    extract_features(spec, 3, corpus, probs_dir, codebook_probs=True, run=RUN)
    assert torch.load(probs_dir / f"{ids[0]}.pt").shape[1] == enc.codebook_size


def test_units_resume_after_a_failure_and_bad_audio_policy(tmp_path, corpus):
    """A bad file fails the run (naming it) after the earlier shards are saved; 'skip' logs, counts, records."""
    table = read_manifest(corpus)
    bad_manifest = tmp_path / "m.tsv"
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....not audio")
    table.loc[4, "path"] = str(broken)
    table.to_csv(bad_manifest, sep="\t", index=False)
    spec = {"kind": "mfcc"}
    km = tmp_path / "km.npz"
    fit_from_corpus(spec, 0, corpus, k=5, seed=0, max_frames=200, out=km, run=RUN)
    run = RunOptions(progress=False, shard_hours=1.5 / 3600)  # several shards
    out = tmp_path / "u.parquet"
    with pytest.raises(BadAudioError, match=r"broken\.wav"):
        extract_units(spec, 0, "kmeans", bad_manifest, out, kmeans=km, run=run)
    work = tmp_path / ".u.parquet.work"
    done = sorted(work.glob("shard-*.parquet"))
    assert done and not out.exists()

    log = tmp_path / "log.txt"
    skip = RunOptions(progress=False, shard_hours=1.5 / 3600, bad_audio="skip")
    with open(log, "w") as f:
        summary = extract_units(spec, 0, "kmeans", bad_manifest, out, kmeans=km, run=skip, log=f)
    text = log.read_text()
    assert "broken.wav" in text and summary["skipped_count"] == 1
    assert summary["skipped"][0]["id"] == table.loc[4, "id"]
    units = read_units(out)
    assert table.loc[4, "id"] not in units["id"].tolist() and len(units) == len(table) - 1
    assert read_units_meta(out)["provenance"]["summary"]["skipped_count"] == 1
    assert not work.exists()
    # Same units as a clean run over the good files (the failed run's shards of another config were dropped).
    clean = tmp_path / "clean.parquet"
    extract_units(spec, 0, "kmeans", corpus, clean, kmeans=km, run=RUN)
    ref = read_units(clean).set_index("id")
    for uid, u in zip(units["id"], units["units"], strict=True):
        np.testing.assert_array_equal(u, ref.loc[uid, "units"])


def test_units_resume_reuses_finished_shards(tmp_path, corpus, monkeypatch):
    from units import extract as ex

    spec = {"kind": "mfcc"}
    km = tmp_path / "km.npz"
    fit_from_corpus(spec, 0, corpus, k=5, seed=0, max_frames=200, out=km, run=RUN)
    run = RunOptions(progress=False, shard_hours=1.5 / 3600)
    extract_units(spec, 0, "kmeans", corpus, tmp_path / "a.parquet", kmeans=km, run=run)
    real, calls = ex.encode_batched, []

    def killed_after_first_shard(wavs, *args, **kwargs):
        if calls:
            raise RuntimeError("killed")
        calls.append(len(wavs))
        return real(wavs, *args, **kwargs)

    work = tmp_path / "work"
    monkeypatch.setattr(ex, "encode_batched", killed_after_first_shard)
    with pytest.raises(RuntimeError, match="killed"):
        extract_units(spec, 0, "kmeans", corpus, tmp_path / "c.parquet", kmeans=km, run=run, work_dir=work)
    assert len(list(work.glob("shard-*.parquet"))) == 1 and not (tmp_path / "c.parquet").exists()

    def counting(wavs, *args, **kwargs):
        calls.append(len(wavs))
        return real(wavs, *args, **kwargs)

    calls.clear()
    monkeypatch.setattr(ex, "encode_batched", counting)
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        extract_units(spec, 0, "kmeans", corpus, tmp_path / "c.parquet", kmeans=km, run=run, work_dir=work, log=f)
    shards = int(log.read_text().split("resuming: 1 of ")[1].split()[0])
    assert len(calls) == shards - 1 >= 1
    a, c = read_units(tmp_path / "a.parquet"), read_units(tmp_path / "c.parquet")
    assert a["id"].tolist() == c["id"].tolist()
    for x, y in zip(a["units"], c["units"], strict=True):
        np.testing.assert_array_equal(x, y)


def test_cli_units_text_and_validate(tmp_path, corpus, spidr_ckpt):
    spec = json.dumps({"kind": "spidr", "checkpoint": spidr_ckpt})
    out = tmp_path / "u.parquet"
    def job(quantizer: str | None, layer: int = 3, encoder: dict | None = None) -> str:
        return json.dumps({"encoder": encoder or json.loads(spec), "layer": layer, "quantizer": quantizer,
                           **({"k": 8, "fit": {}} if quantizer == "kmeans" else {})})

    main(["units", "--config", job("codebook"), "--manifest", str(corpus), "--out", str(out), "--no-progress"])
    main(["text", str(out), str(tmp_path / "u.txt")])
    units = read_units(out)
    lines = (tmp_path / "u.txt").read_text().splitlines()
    pairs = zip(units["id"], units["units"], strict=True)
    assert lines == [f"{i}\t{' '.join(map(str, u.tolist()))}" for i, u in pairs]
    with pytest.raises((ValueError, OSError), match="needs --kmeans"):
        main(["units", "--config", job("kmeans"), "--manifest", str(corpus), "--out", str(out), "--no-progress"])
    with pytest.raises((ValueError, OSError), match="'mfcc' encoder has none"):
        main(["validate", "--config", job("codebook", 0, {"kind": "mfcc"})])
    with pytest.raises((ValueError, OSError), match="quantizer must be null"):
        main(["features", "--config", job("codebook"), "--manifest", str(corpus), "--out", str(tmp_path / "f")])
    main(["validate", "--config", job("codebook", 4)])


@pytest.mark.slow
def test_demo_corpus_units_dedup_and_abx_features(tmp_path, demo_corpus, spidr_ckpt):
    """The demo corpus through the stage: k-means on train, units + dedup of dev, dev features read by eval.abx."""
    from eval.abx import main as abx_main
    from units.dedup import deduplicate

    spec = {"kind": "spidr", "checkpoint": spidr_ckpt}
    km = tmp_path / "km.npz"
    fit_from_corpus(spec, 3, demo_corpus / "train" / "manifest.tsv", k=16, seed=0, max_frames=2000, out=km,
                    run=RUN)
    dev = demo_corpus / "dev" / "manifest.tsv"
    extract_units(spec, 3, "kmeans", dev, tmp_path / "u.parquet", kmeans=km, run=RUN)
    stats = deduplicate(tmp_path / "u.parquet", tmp_path / "d.parquet", tmp_path / "s.json")
    assert stats["utterances"] == len(read_manifest(dev)) and 1 <= stats["active_units"] <= 16
    assert 0 < stats["dedup_units_per_second"] <= 50 and stats["bitrate"] == pytest.approx(
        4 * stats["dedup_units_per_second"])
    extract_features(spec, 3, dev, tmp_path / "feats", run=RUN)
    abx_main(["--item", str(demo_corpus / "dev" / "triphone.item"), "--features", str(tmp_path / "feats"),
              "--out", str(tmp_path / "abx.json")])
    result = json.loads((tmp_path / "abx.json").read_text())
    assert result["details"]["items_used"] > 0


def test_split_rows_balanced_consecutive_and_complete():
    from units.shards import split_rows

    sizes = [5, 1, 1, 1, 4, 4, 2, 10, 1]
    for n in range(1, 12):
        shards = split_rows(sizes, n)
        assert len(shards) == n
        assert [r for s in shards for r in s] == list(range(len(sizes)))  # every row once, in order
    assert [list(s) for s in split_rows([1] * 6, 3)] == [[0, 1], [2, 3], [4, 5]]
    assert [len(s) for s in split_rows([1, 1], 4)].count(0) == 2  # more shards than rows: some are empty


@pytest.mark.parametrize("quantizer", ["kmeans", "codebook"])
def test_sharded_units_equal_unsharded_bit_for_bit(tmp_path, corpus, spidr_ckpt, quantizer):
    from units.gather import gather_units

    spec = {"kind": "mfcc"} if quantizer == "kmeans" else {"kind": "spidr", "checkpoint": spidr_ckpt}
    layer, km = (0, tmp_path / "km.npz") if quantizer == "kmeans" else (3, None)
    if km is not None:
        fit_from_corpus(spec, 0, corpus, k=5, seed=0, max_frames=200, out=km, run=RUN)
    whole = tmp_path / "whole.parquet"
    extract_units(spec, layer, quantizer, corpus, whole, kmeans=km, run=RUN)
    for n in (2, 3, 9):  # 9 > 7 utterances: empty shards too
        parts = [tmp_path / f"{i}-of-{n}.parquet" for i in range(n)]
        for i, part in enumerate(parts):
            extract_units(spec, layer, quantizer, corpus, part, kmeans=km, run=RUN, shard=(i, n))
        gathered = tmp_path / f"gathered-{n}.parquet"
        summary = gather_units(parts, gathered)
        a, b = read_units(whole), read_units(gathered)
        assert a["id"].tolist() == b["id"].tolist() and summary["utterances"] == len(a)
        for x, y in zip(a["units"], b["units"], strict=True):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
        assert summary == read_units_meta(whole)["provenance"]["summary"]
        assert read_units_meta(gathered)["vocab_size"] == read_units_meta(whole)["vocab_size"]


def test_gather_refuses_missing_or_reordered_shards(tmp_path, corpus):
    from units.format import UnitsFileError
    from units.gather import gather_units

    spec = {"kind": "mfcc"}
    km = tmp_path / "km.npz"
    fit_from_corpus(spec, 0, corpus, k=5, seed=0, max_frames=200, out=km, run=RUN)
    parts = [tmp_path / f"{i}.parquet" for i in range(3)]
    for i, part in enumerate(parts):
        extract_units(spec, 0, "kmeans", corpus, part, kmeans=km, run=RUN, shard=(i, 3))
    with pytest.raises(UnitsFileError, match=r"1\.parquet: shard 1 of 3, but it is given as shard 0 of 2"):
        gather_units(parts[1:], tmp_path / "out.parquet")
    with pytest.raises(UnitsFileError, match=r"2\.parquet: shard 2 of 3, but it is given as shard 1 of 3"):
        gather_units([parts[0], parts[2], parts[1]], tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_killed_shard_job_resumes_alone(tmp_path, corpus, monkeypatch):
    """Shard 1 of 2 is killed after its first piece: rerunning it reuses that piece, shard 0 is untouched."""
    from units import extract as ex

    spec = {"kind": "mfcc"}
    km = tmp_path / "km.npz"
    fit_from_corpus(spec, 0, corpus, k=5, seed=0, max_frames=200, out=km, run=RUN)
    run = RunOptions(progress=False, shard_hours=1.5 / 3600)  # several pieces per shard
    parts = [tmp_path / f"{i}-of-2.parquet" for i in range(2)]
    extract_units(spec, 0, "kmeans", corpus, parts[0], kmeans=km, run=run, shard=(0, 2))
    real, calls = ex.encode_batched, []

    def killed_after_first_piece(wavs, *args, **kwargs):
        if calls:
            raise RuntimeError("killed")
        calls.append(len(wavs))
        return real(wavs, *args, **kwargs)

    monkeypatch.setattr(ex, "encode_batched", killed_after_first_piece)
    with pytest.raises(RuntimeError, match="killed"):
        extract_units(spec, 0, "kmeans", corpus, parts[1], kmeans=km, run=run, shard=(1, 2))
    assert not parts[1].exists() and len(list(tmp_path.glob(".1-of-2.parquet.work/shard-*.parquet"))) == 1
    monkeypatch.setattr(ex, "encode_batched", real)
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        extract_units(spec, 0, "kmeans", corpus, parts[1], kmeans=km, run=run, shard=(1, 2), log=f)
    assert "resuming: 1 of " in log.read_text()
    whole = tmp_path / "whole.parquet"
    extract_units(spec, 0, "kmeans", corpus, whole, kmeans=km, run=RUN)
    gathered = [sys.executable, "-m", "units.gather", *map(str, parts), "--out", str(tmp_path / "gathered.parquet")]
    subprocess.run(gathered, check=True, capture_output=True)  # the workflow's command
    a, b = read_units(whole), read_units(tmp_path / "gathered.parquet")
    assert a["id"].tolist() == b["id"].tolist()
    for x, y in zip(a["units"], b["units"], strict=True):
        np.testing.assert_array_equal(x, y)
