"""eval.unit_quality: PNMI, purities, perplexity and bitrate on a confusion table computed by hand."""

from __future__ import annotations

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
    with pytest.raises(BenchmarkLayoutError, match=r"phones_100hz\.jsonl: line 1 lacks.*\n.*expected layout"):
        evaluate(units, phones, UnitQualityConfig())
    with pytest.raises(ValueError, match="not an integer multiple"):
        evaluate(units, phones, UnitQualityConfig(label_rate=75))
    with pytest.raises(ValueError, match="unknown key"):
        load(UnitQualityConfig, {"rate": 100})


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
