"""eval.unit_quality: PNMI, purities, perplexity and bitrate on a confusion table computed by hand."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest

from common.config import load
from eval.benchmarks import BenchmarkLayoutError
from eval.unit_quality import UnitQualityConfig, evaluate, quality_from_counts, run
from units.format import UnitsWriter

# Phones A, B x units 0..3 (unit 3 never used). p(A) = .6, p(B) = .4, p(u) = (.4, .3, .3, 0).
COUNTS = np.array([[4, 0, 2, 0],
                   [0, 3, 1, 0]])
MI = 0.4 * math.log(0.4 / (0.6 * 0.4)) + 0.2 * math.log(0.2 / (0.6 * 0.3)) \
    + 0.3 * math.log(0.3 / (0.4 * 0.3)) + 0.1 * math.log(0.1 / (0.4 * 0.3))
H_PHONE = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
H_UNIT_BITS = -(0.4 * math.log2(0.4) + 2 * 0.3 * math.log2(0.3))


def test_quality_from_hand_computed_table() -> None:
    q = quality_from_counts(COUNTS)
    assert q["pnmi"] == pytest.approx(MI / H_PHONE, abs=1e-12)
    assert q["pnmi"] == pytest.approx(0.716269, abs=1e-6)
    assert q["phone_purity"] == pytest.approx(0.4 + 0.3 + 0.2)  # best phone of each unit
    assert q["cluster_purity"] == pytest.approx(0.4 + 0.3)  # best unit of each phone
    assert q["codebook_perplexity"] == pytest.approx(2**H_UNIT_BITS)
    assert q["active_units"] == 3


def test_perfect_and_independent_units() -> None:
    assert quality_from_counts(np.diag([5, 3, 2]))["pnmi"] == pytest.approx(1.0)
    assert quality_from_counts(np.outer([1, 2], [3, 1, 2]))["pnmi"] == pytest.approx(0.0, abs=1e-12)
    collapsed = quality_from_counts(np.array([[7], [3], [11]]))  # one active unit: a collapsed codebook
    assert collapsed["pnmi"] == 0.0 and str(collapsed["pnmi"]) == "0.0"
    assert collapsed["active_units"] == 1 and collapsed["codebook_perplexity"] == 1.0


def write_case(root: Path, *, deduplicated: bool = False) -> tuple[Path, Path]:
    """Two utterances whose aligned frames give exactly COUNTS (units x2 vs 100 Hz labels, truncated)."""
    utts = {"u1": ([0, 0, 2, 1], list("AAAAABB")),  # 8 frames vs 7 labels: A0 x4, A2, B2, B1
            "u2": ([1, 2], list("BBA"))}  # 4 frames vs 3 labels: B1 x2, A2
    units_path = root / ("dedup.parquet" if deduplicated else "units.parquet")
    with UnitsWriter(units_path, vocab_size=4, frame_rate=50, deduplicated=deduplicated) as w:
        for uid, (units, _) in utts.items():
            if deduplicated:
                u = np.asarray(units)
                starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
                w.write(uid, u[starts], np.diff(np.r_[starts, len(u)]))
            else:
                w.write(uid, units)
        w.write("unlabelled", [3], [2]) if deduplicated else w.write("unlabelled", [3, 3])
    phones = root / "phones_100hz.jsonl"
    phones.write_text("".join(json.dumps({"id": k, "phones": v[1]}) + "\n" for k, v in utts.items()))
    return units_path, phones


@pytest.mark.parametrize("deduplicated", [False, True])
def test_end_to_end_counts_and_bitrate(tmp_path: Path, deduplicated: bool) -> None:
    units, phones = write_case(tmp_path, deduplicated=deduplicated)
    doc = run(units, phones, tmp_path / "m.json", cfg=UnitQualityConfig(), labels={"units": "kmeans", "k": 4})
    got = {m["metric"]: m["value"] for m in doc["metrics"]}
    assert got["pnmi"] == pytest.approx(MI / H_PHONE, abs=1e-12)
    assert got["phone_purity"] == pytest.approx(0.9)
    assert got["cluster_purity"] == pytest.approx(0.7)
    assert got["active_units"] == 3
    # log2(4) bits x (3 + 2 runs) / (6 frames x 20 ms)
    assert got["bitrate"] == pytest.approx(2 * 5 / 0.12)
    d = doc["details"]
    assert d["aligned_frames"] == 10 and d["utterances_without_labels"] == 1
    assert d["length_difference_max"] == 1 and d["length_difference_total"] == 2
    assert "repeated x2" in doc["metrics"][0]["conventions"]["alignment"]


def test_length_mismatch_beyond_tolerance_names_the_utterance(tmp_path: Path) -> None:
    units, phones = write_case(tmp_path)
    phones.write_text(json.dumps({"id": "u1", "phones": list("AAAA")}) + "\n")
    with pytest.raises(ValueError, match="utterance u1: 4 label frames vs 4 units x 2 = 8"):
        evaluate(units, phones, UnitQualityConfig())
    assert evaluate(units, phones, UnitQualityConfig(max_length_diff=4))[0]["active_units"] == 1  # frames 0,0,0,0


def test_missing_units_and_bad_labels_are_errors(tmp_path: Path) -> None:
    units, phones = write_case(tmp_path)
    phones.write_text(phones.read_text() + json.dumps({"id": "u9", "phones": ["A"]}) + "\n")
    with pytest.raises(ValueError, match=r"no units for 1 of the 3 utterances.*u9"):
        evaluate(units, phones, UnitQualityConfig())
    phones.write_text('{"utt": "u1"}\n')
    with pytest.raises(BenchmarkLayoutError,
                       match=r"phones_100hz\.jsonl: line 1 is not an object with a list 'phones'\n.*expected layout"):
        evaluate(units, phones, UnitQualityConfig())
    with pytest.raises(ValueError, match="not an integer multiple"):
        evaluate(units, phones, UnitQualityConfig(label_rate=75))
    with pytest.raises(ValueError, match="unknown key"):
        load(UnitQualityConfig, {"rate": 100})


UTTS = {"u1": ([0, 0, 2, 1], list("AAAAABB")), "u2": ([1, 2], list("BBA"))}  # write_case's utterances


def write_official(root: Path, kind: str) -> tuple[Path, Path]:
    """write_case's utterances in a published format: SpidR's gzip JSON lines with a `name` key (units and phones,
    as paper/results and paper/assets ship them), or textlesslib / slamkit text units `name<TAB>u1 u2 ...`."""
    phones = root / "phoneme-dev.jsonl.gz"
    with gzip.open(phones, "wt") as f:
        f.writelines(json.dumps({"name": k, "phones": v[1]}, separators=(",", ":")) + "\n" for k, v in UTTS.items())
    if kind == "jsonl.gz":
        units = root / "units-kmeans.jsonl.gz"
        with gzip.open(units, "wt") as f:
            f.writelines(json.dumps({"name": k, "units": v[0]}) + "\n" for k, v in UTTS.items())
            f.write(json.dumps({"name": "unlabelled", "units": [3, 3]}) + "\n")
    else:
        units = root / "units.txt"
        units.write_text("".join(f"{k}\t{' '.join(map(str, v[0]))}\n" for k, v in UTTS.items()) + "unlabelled\t3 3\n")
    return units, phones


@pytest.mark.parametrize("kind", ["jsonl.gz", "text"])
def test_official_formats_are_read_as_they_are(tmp_path: Path, kind: str) -> None:
    units, phones = write_official(tmp_path, kind)
    result, details = evaluate(units, phones, UnitQualityConfig())
    assert result["pnmi"] == pytest.approx(MI / H_PHONE, abs=1e-12)
    assert result["phone_purity"] == pytest.approx(0.9) and result["active_units"] == 3
    # neither file records rate nor vocabulary: 50 Hz and largest id + 1 = 4, as the Parquet case records them
    assert details["unit_rate_hz"] == 50 and details["vocab_size"] == 4
    assert details["units_format"] == ("jsonl" if kind == "jsonl.gz" else "text")
    assert result["bitrate"] == pytest.approx(2 * 5 / 0.12)
    # a larger configured vocabulary (SpidR's 256) changes only the bitrate's log2(V)
    wide, _ = evaluate(units, phones, UnitQualityConfig(vocab_size=256))
    assert wide["bitrate"] == pytest.approx(8 * 5 / 0.12) and wide["pnmi"] == result["pnmi"]
    doc = run(units, phones, tmp_path / "m.json", cfg=UnitQualityConfig(), labels={})
    assert "largest unit id + 1" in doc["metrics"][0]["conventions"]["units"]


def test_parquet_units_match_their_published_format_twins(tmp_path: Path) -> None:
    parquet, ours = write_case(tmp_path)
    jsonl, official = write_official(tmp_path, "jsonl.gz")
    assert evaluate(parquet, official, UnitQualityConfig())[0] == evaluate(jsonl, ours, UnitQualityConfig())[0]
    with pytest.raises(ValueError, match=r"vocab_size=8 contradicts .*units\.parquet, which records 4"):
        evaluate(parquet, ours, UnitQualityConfig(vocab_size=8))


@pytest.mark.parametrize(("content", "message"), [
    ("u1\t0 x 2\n", r"line 1 \(utterance 'u1'\): units must be integers"),
    ("u1 0 1 2\n", r"line 1 is not '<utterance id><TAB>u1 u2 \.\.\.'"),
    ("u1\t0 1\nu1\t2\n", "line 2: utterance 'u1' appears twice"),
    ('{"name": "u1", "units": [0, -1]}\n', r"line 1 \(utterance 'u1'\): negative unit id -1"),
    ('{"name": "u1", "id": "u1", "units": [0]}\n', "line 1 needs exactly one string utterance id"),
    ('{"name": "u1", "units": [0.5]}\n', r"line 1 \(utterance 'u1'\): units must be integers"),
])
def test_bad_published_units_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    _, phones = write_case(tmp_path)
    units = tmp_path / "units.txt"
    units.write_text(content)
    with pytest.raises(BenchmarkLayoutError, match=rf"units\.txt: {message}.*\n.*expected layout: units file"):
        evaluate(units, phones, UnitQualityConfig())


def test_truncated_gzip_is_named(tmp_path: Path) -> None:
    units, phones = write_official(tmp_path, "jsonl.gz")
    phones.write_bytes(phones.read_bytes()[:-8])
    with pytest.raises(BenchmarkLayoutError, match=r"phoneme-dev\.jsonl\.gz: unreadable gzip text"):
        evaluate(units, phones, UnitQualityConfig())


def test_exact_logs_agree_with_the_epsilon_formula_of_spidr() -> None:
    """SpidR's units_quality adds eps = 1e-10 inside its logs; on a realistic table the two agree to 1e-6."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.gamma(0.3, 50, size=(40, 256))).astype(np.float64)
    p = counts / counts.sum()
    px, pz = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    eps = 1e-10
    pnmi_eps = (p * np.log(p / (px @ pz + eps) + eps)).sum() / (-px * np.log(px + eps)).sum()
    perplexity_eps = 2 ** -(pz * np.log2(pz + eps)).sum()
    q = quality_from_counts(counts)
    assert q["pnmi"] == pytest.approx(pnmi_eps, abs=1e-6)
    assert q["codebook_perplexity"] == pytest.approx(perplexity_eps, rel=1e-6)


def test_pooled_sets_give_one_count_matrix(tmp_path: Path) -> None:
    """PNMI over two sets (the paper's dev-clean + dev-other) is that of their union, not a mean of two PNMIs."""
    utts = {"u1": ([0, 0, 2, 1], list("AAAAABB")), "u2": ([1, 2], list("BBA"))}
    parts = []
    for name, (units, phones) in utts.items():  # one utterance per set: each alone has another table
        folder = tmp_path / name
        folder.mkdir()
        with UnitsWriter(folder / "units.parquet", vocab_size=4, frame_rate=50, deduplicated=False) as w:
            w.write(name, units)
        (folder / "phones.jsonl").write_text(json.dumps({"id": name, "phones": phones}) + "\n")
        parts.append((folder / "units.parquet", folder / "phones.jsonl"))
    pooled, details = evaluate([u for u, _ in parts], [p for _, p in parts], UnitQualityConfig())
    assert pooled["pnmi"] == pytest.approx(MI / H_PHONE, abs=1e-12)  # COUNTS, the union's table
    assert details["utterances"] == 2 and len(details["pooled"]) == 2
    alone = [evaluate(u, p, UnitQualityConfig())[0]["pnmi"] for u, p in parts]
    assert all(abs(a - pooled["pnmi"]) > 1e-3 for a in alone)
    doc = run([u for u, _ in parts], [p for _, p in parts], tmp_path / "m.json", cfg=UnitQualityConfig(), labels={})
    assert set(doc["inputs"]) == {"units_0", "units_1", "phones_0", "phones_1"}
    with pytest.raises(ValueError, match="is in both"):
        evaluate([parts[0][0], parts[0][0]], [parts[0][1], parts[0][1]], UnitQualityConfig())
    with pytest.raises(ValueError, match="one phone file per units file"):
        evaluate([parts[0][0], parts[1][0]], [parts[0][1]], UnitQualityConfig())
