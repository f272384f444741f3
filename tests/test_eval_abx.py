"""eval.abx: our conditions, slicing and item filtering give exactly what a direct fastabx call gives."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
import torch
from fastabx import zerospeech_abx

from common.config import load
from eval.abx import AbxConfig, conditions_for, features_frame_rate, run, select_items, slicing_env, token_frames
from eval.benchmarks import BenchmarkLayoutError, read_item_file
from eval.config import AbxJob
from units.format import UnitsWriter

HEADER = "#file onset offset #phone prev-phone next-phone speaker\n"
PHONES = ("a", "b", "c")


def make_corpus(root: Path, *, speakers: int = 3, files: int = 3, seconds: float = 3.0, dim: int = 6,
                seed: int = 0) -> dict[str, list[tuple[str, float, float]]]:
    """50 Hz features = phone embedding + speaker offset + noise; phone boundaries on the 12.5 ms + 10 ms k grid
    of the LibriSpeech item files, so the two slicings differ. Writes FEAT/<utt>.pt, triphone.item, phoneme.item
    and units.parquet (the nearest-embedding unit of every frame)."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(len(PHONES), dim))
    (root / "feats").mkdir(parents=True)
    tri, pho, segments = [], [], {}
    with UnitsWriter(root / "units.parquet", vocab_size=len(PHONES), frame_rate=50) as writer:
        for s in range(speakers):
            offset = rng.normal(scale=0.6, size=dim)
            for f in range(files):
                uid = f"spk{s}-utt{f}"
                segs, t = [], 0.0125
                while True:
                    dur = 0.01 * int(rng.integers(4, 12))
                    if t + dur > seconds - 0.05:
                        break
                    segs.append((PHONES[rng.integers(len(PHONES))], round(t, 4), round(t + dur, 4)))
                    t += dur
                n = int(seconds * 50)
                centres = 0.01 + 0.02 * np.arange(n)
                ends = np.array([off for _, _, off in segs])
                which = np.minimum(np.searchsorted(ends, centres), len(segs) - 1)
                ids = np.array([PHONES.index(segs[i][0]) for i in which])
                feats = emb[ids] + offset + rng.normal(scale=1.1, size=(n, dim))
                torch.save(torch.tensor(feats, dtype=torch.float32), root / "feats" / f"{uid}.pt")
                units = np.argmin(((feats[:, None, :] - offset - emb[None]) ** 2).sum(-1), axis=1)
                writer.write(uid, units)
                for k in range(1, len(segs) - 1):
                    (prev, p_on, _), (ph, on, off), (nxt, _, n_off) = segs[k - 1], segs[k], segs[k + 1]
                    tri.append(f"{uid} {p_on:.4f} {n_off:.4f} {ph} {prev} {nxt} s{s}\n")
                    pho.append(f"{uid} {on:.4f} {off:.4f} {ph} {prev} {nxt} s{s}\n")
                segments[uid] = segs
    (root / "triphone.item").write_text(HEADER + "".join(tri))
    (root / "phoneme.item").write_text(HEADER + "".join(pho))
    return segments


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("abx")
    make_corpus(root)
    return root


def direct(item: Path, feats: Path, *, speaker: str, context: str, slicing: str, distance: str = "angular",
           mx: int | None = 10, mxa: int | None = 5) -> float:
    with slicing_env(slicing):
        return 100 * zerospeech_abx(item, feats, max_size_group=mx, max_x_across=mxa, speaker=speaker,
                                    context=context, distance=distance, frequency=50, seed=0, progress=False)


@pytest.mark.parametrize("slicing", ["fastabx", "librilight"])
def test_triphone_features_match_direct_fastabx(corpus: Path, tmp_path: Path, slicing: str) -> None:
    cfg = AbxConfig(slicing=slicing)
    doc = run(corpus / "triphone.item", tmp_path / "m.json", features=corpus / "feats", units_path=None,
              frame_rate=50, cfg=cfg, labels={"encoder": "synthetic", "layer": 1})
    got = {m["metric"]: m["value"] for m in doc["metrics"]}
    assert set(got) == {"abx_triphone_within_speaker", "abx_triphone_across_speaker"}
    assert got["abx_triphone_within_speaker"] == pytest.approx(
        direct(corpus / "triphone.item", corpus / "feats", speaker="within", context="within", slicing=slicing),
        abs=1e-9)
    assert got["abx_triphone_across_speaker"] == pytest.approx(
        direct(corpus / "triphone.item", corpus / "feats", speaker="across", context="within", slicing=slicing),
        abs=1e-9)
    assert 0 < got["abx_triphone_within_speaker"] < 50  # the features carry the phone: better than chance
    conv = doc["metrics"][0]["conventions"]
    assert conv["slicing"].startswith("fastabx" if slicing == "fastabx" else "Libri-Light")
    assert conv["distance"] == "angular" and "max_size_group=10" in conv["subsampling"]
    assert doc["labels"] == {"encoder": "synthetic", "layer": 1, "quantizer": "continuous"}
    assert json.loads((tmp_path / "m.json").read_text())["metrics"] == doc["metrics"]


def test_phoneme_conditions_without_subsampling_match_direct_fastabx(corpus: Path, tmp_path: Path) -> None:
    cfg = AbxConfig(max_size_group=None, max_x_across=None)
    doc = run(corpus / "phoneme.item", tmp_path / "m.json", features=corpus / "feats", units_path=None,
              frame_rate=None, cfg=cfg, labels={})
    got = {m["metric"]: m["value"] for m in doc["metrics"]}
    for context in ("within", "any"):
        for speaker in ("within", "across"):
            want = direct(corpus / "phoneme.item", corpus / "feats", speaker=speaker, context=context,
                          slicing="fastabx", mx=None, mxa=None)
            assert got[f"abx_phoneme_{context}_context_{speaker}_speaker"] == pytest.approx(want, abs=1e-9)
    assert doc["metrics"][0]["conventions"]["subsampling"] == "none"


def test_units_identical_distance_matches_direct_fastabx(corpus: Path, tmp_path: Path) -> None:
    from units.format import read_units

    unit_dir = tmp_path / "unitfeats"
    unit_dir.mkdir()
    for row in read_units(corpus / "units.parquet").itertuples():
        torch.save(torch.tensor(np.asarray(row.units), dtype=torch.int64)[:, None], unit_dir / f"{row.id}.pt")
    doc = run(corpus / "triphone.item", tmp_path / "m.json", features=None, units_path=corpus / "units.parquet",
              frame_rate=None, cfg=AbxConfig(), labels={})
    got = {m["metric"]: m["value"] for m in doc["metrics"]}
    want = direct(corpus / "triphone.item", unit_dir, speaker="within", context="within", slicing="fastabx",
                  distance="identical")
    assert got["abx_triphone_within_speaker"] == pytest.approx(want, abs=1e-9)
    assert doc["metrics"][0]["conventions"]["distance"] == "identical"
    assert doc["metrics"][0]["conventions"]["input"] == "discrete units"


def test_deduplicated_units_are_expanded_to_frames(corpus: Path, tmp_path: Path) -> None:
    from units.format import read_units

    dedup = tmp_path / "dedup.parquet"
    with UnitsWriter(dedup, vocab_size=len(PHONES), frame_rate=50, deduplicated=True) as writer:
        for row in read_units(corpus / "units.parquet").itertuples():
            u = np.asarray(row.units)
            starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
            writer.write(row.id, u[starts], np.diff(np.r_[starts, len(u)]))
    cfg = AbxConfig(speakers=("within",))
    frames = run(corpus / "triphone.item", tmp_path / "a.json", features=None, units_path=corpus / "units.parquet",
                 frame_rate=None, cfg=cfg, labels={})
    expanded = run(corpus / "triphone.item", tmp_path / "b.json", features=None, units_path=dedup, frame_rate=None,
                   cfg=cfg, labels={})
    assert frames["metrics"][0]["value"] == expanded["metrics"][0]["value"]


@pytest.mark.parametrize("kind", ["jsonl.gz", "text"])
def test_published_unit_formats_give_the_parquet_numbers(corpus: Path, tmp_path: Path, kind: str) -> None:
    """SpidR's gzip JSON lines ({"name", "units"}) and textlesslib text units are read as they are; they record no
    rate, so 50 Hz is assumed (or --frame-rate), and the ABX equals the Parquet file's."""
    from units.format import read_units

    rows = list(read_units(corpus / "units.parquet").itertuples())
    if kind == "jsonl.gz":
        path = tmp_path / "units-kmeans.jsonl.gz"
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps({"name": r.id, "units": np.asarray(r.units).tolist()}) + "\n" for r in rows)
    else:
        path = tmp_path / "units.txt"
        path.write_text("".join(f"{r.id}\t{' '.join(map(str, r.units))}\n" for r in rows))
    cfg = AbxConfig(speakers=("within",))
    want = run(corpus / "triphone.item", tmp_path / "a.json", features=None, units_path=corpus / "units.parquet",
               frame_rate=None, cfg=cfg, labels={})
    got = run(corpus / "triphone.item", tmp_path / "b.json", features=None, units_path=path, frame_rate=None, cfg=cfg,
              labels={})
    assert got["metrics"][0]["value"] == want["metrics"][0]["value"]
    fmt = "jsonl" if kind == "jsonl.gz" else "text"
    assert got["metrics"][0]["conventions"]["input"] == f"discrete units ({fmt} file, default rate)"
    assert got["metrics"][0]["conventions"]["frame_rate_hz"] == 50.0
    with pytest.raises(ValueError, match=r"--frame-rate 25\.0 contradicts"):
        run(corpus / "triphone.item", tmp_path / "c.json", features=None, units_path=corpus / "units.parquet",
            frame_rate=25.0, cfg=cfg, labels={})


def test_tokens_without_frames_are_dropped_and_counted(corpus: Path, tmp_path: Path) -> None:
    lines = (corpus / "triphone.item").read_text().splitlines(keepends=True)
    uid = lines[1].split()[0]
    extra = [f"{uid} 0.0150 0.0250 a b c s0\n",  # between two frame centres (10 ms, 30 ms): empty
             f"{uid} 2.9500 3.1000 a b c s0\n"]  # runs past the 150 frames of a 3 s file
    item = tmp_path / "triphone.item"
    item.write_text("".join(lines) + "".join(extra))
    doc = run(item, tmp_path / "m.json", features=corpus / "feats", units_path=None, frame_rate=50,
              cfg=AbxConfig(speakers=("within",)), labels={})
    assert doc["details"]["items_dropped"] == {"empty": 1, "past_end": 1}
    # issue 23, case 4: said in every ABX cell's conventions (the report's footnotes) and as a warning (its notes)
    total = len(lines) + 1
    assert doc["metrics"][0]["conventions"]["items_dropped"] == (f"2 of {total} (1 past the end of their utterance, "
                                                                 "1 without a frame)")
    assert doc["details"]["warnings"] == [f"{item}: 1 of {total} items fall past the end of their utterance in "
                                          f"{corpus / 'feats'} and were left out of ABX"]
    assert doc["details"]["items_used"] == len(lines) - 1
    want = direct(corpus / "triphone.item", corpus / "feats", speaker="within", context="within", slicing="fastabx")
    assert doc["metrics"][0]["value"] == pytest.approx(want, abs=1e-9)


def test_token_frames_follow_both_conventions() -> None:
    rate = Decimal(50)
    # frame centres 10, 30, 50, 70 ms: [0.02, 0.07] holds the centres 30, 50 and 70 ms
    assert token_frames(Decimal("0.02"), Decimal("0.07"), rate, librilight=False) == (1, 4)
    assert token_frames(Decimal("0.02"), Decimal("0.07"), rate, librilight=True) == (1, 3)
    assert token_frames(Decimal("0.015"), Decimal("0.025"), rate, librilight=False) == (1, 1)  # empty


def test_select_items_needs_every_utterance(corpus: Path) -> None:
    items = read_item_file(corpus / "triphone.item")
    with pytest.raises(FileNotFoundError, match="no features/units"):
        select_items(items, {}, 50, False)


def test_conditions_follow_zerospeech() -> None:
    assert [c.name for c in conditions_for("triphone", ("within", "across"))] == [
        "abx_triphone_within_speaker", "abx_triphone_across_speaker"]
    names = [c.name for c in conditions_for("phoneme", ("within", "across"))]
    assert "abx_phoneme_any_context_across_speaker" in names and len(names) == 4
    any_across = conditions_for("phoneme", ("across",))[1]
    assert any_across.by == () and any_across.across == ("speaker",)


def test_bad_item_file_names_path_and_layout(tmp_path: Path) -> None:
    bad = tmp_path / "triphone.item"
    bad.write_text("file onset offset phone\nu 0.1 0.2 a\n")
    with pytest.raises(BenchmarkLayoutError, match=r"triphone\.item.*\n.*expected layout: ZeroSpeech ABX item"):
        read_item_file(bad)
    with pytest.raises(BenchmarkLayoutError, match="item file not found"):
        read_item_file(tmp_path / "missing.item")


def test_config_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        load(AbxConfig, {"slice": "fastabx"})
    with pytest.raises(ValueError, match=r"'slicing': 'kaldi' is not allowed; expected one of \['fastabx'"):
        load(AbxConfig, {"slicing": "kaldi"})
    with pytest.raises(ValueError, match=r"'abx\.max_size_group': 0 is out of range"):
        load(AbxJob, {"abx": {"max_size_group": 0}})


def test_features_frame_rate_from_the_extraction_marker(tmp_path: Path) -> None:
    assert features_frame_rate(tmp_path, None) == 50.0  # nothing recorded: the 50 Hz of HuBERT / SpidR
    (tmp_path / "_SUCCESS.json").write_text(json.dumps({"frame_rate": 100.0}))
    assert features_frame_rate(tmp_path, None) == 100.0
    assert features_frame_rate(tmp_path, 100) == 100.0
    with pytest.raises(ValueError, match=r"--frame-rate 50 contradicts .*_SUCCESS\.json, which records 100"):
        features_frame_rate(tmp_path, 50)


def test_single_speaker_has_no_across_cell(corpus: Path, tmp_path: Path) -> None:
    lines = (corpus / "triphone.item").read_text().splitlines(keepends=True)
    item = tmp_path / "triphone.item"
    item.write_text(lines[0] + "".join(line for line in lines[1:] if line.rstrip().endswith(" s0")))
    doc = run(item, tmp_path / "m.json", features=corpus / "feats", units_path=None, frame_rate=50,
              cfg=AbxConfig(), labels={})
    within, across = doc["metrics"]
    assert within["value"] is not None and across["value"] is None
    assert across["conventions"]["not_computed"] == "no ABX cell under this condition"
