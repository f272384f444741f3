"""eval.published and the report's published schema: ours in the SpidR paper's long format, and ours beside theirs.

The published files are CC BY-NC and not in this repository: the tests write files in the same schema (columns and
metric names as facebookresearch/spidr paper/results/*.csv), including a deliberately shifted copy.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from scipy import stats

from common.config import ConfigError
from eval import published
from eval.published import PublishedError, PublishedNames, precision, seed_interval
from eval.report import build_report
from eval.results import Metric, write_metrics

REPO = Path(__file__).resolve().parent.parent
NAMES = PublishedNames.from_dict({
    "encoders": {"spidr_base": "spidr", "wavlm_base": {"default": "wavlm", "spoken-lm": "wavlm_base"}},
    "datasets": {"dev": "dev-clean", "dev_other": "dev-other"}, "spoken_lm_set": "dev",
    "units_quality_set": "dev_pooled", "lm_hours": {"opt125m": 6000, "opt125m_ll600": 600}})
PUBLISHED_COLUMNS = {"spoken-lm": ["model", "num_units", "layer", "hours", "metric", "score"],
                     "units-quality": ["model", "layer", "metric", "score"],
                     "abx-discrete": ["model", "dataset", "layer", "speaker", "score"],
                     "abx-continuous": ["model", "dataset", "layer", "speaker", "score"],
                     "map-continuous": ["model", "dataset", "layer", "score"]}


def units_labels(encoder: str, layer: int, quantizer: str, k: int | None, bench: str, **extra) -> dict:
    units = None if quantizer in ("continuous", "codebook_probs") else f"{encoder}_{quantizer}_l{layer}"
    return {"encoder": encoder, "units": units, "layer": layer, "quantizer": quantizer, "k": k, "set": bench,
            **extra}


def write(root: Path, name: str, labels: dict, metrics: list[Metric]) -> Path:
    out = root / f"{name}.json"
    write_metrics(out, task="t", labels=labels, inputs={}, config={}, metrics=metrics)
    return out


def lm(name: str, value: float, half: float | None = 1.0) -> Metric:
    ci = (value - half, value + half) if half is not None else None
    return Metric(name, value, "%", 100, {"normalisation": "mean log-likelihood"}, ci=ci)


def metrics_files(root: Path) -> list[Path]:
    """A small run: SpidR k-means L6 (6k h LM, a 600 h LM with two seeds) and codebook L5, WavLM L11 k-means."""
    files = []
    for encoder, layer, quantizer, k in (("spidr_base", 6, "kmeans", 256), ("spidr_base", 5, "codebook", None),
                                         ("wavlm_base", 11, "kmeans", 256)):
        tag = f"{encoder}{layer}{quantizer}"
        base = 60.0 + layer
        files.append(write(root, f"{tag}-lm", {**units_labels(encoder, layer, quantizer, k, "dev"), "lm": "opt125m",
                                                "experiment": tag},
                           [lm("swuggy_all", base), lm("swuggy_in_vocab", base + 5), lm("sblimp", 55.0),
                            lm("tsc", 70.0), lm("ssc", 52.0)]))
        for bench in ("dev", "dev_other"):
            files.append(write(root, f"{tag}-{bench}-abx", units_labels(encoder, layer, quantizer, k, bench),
                               [Metric("abx_triphone_within_speaker", 5.0 + layer / 10, "%", 10),
                                Metric("abx_triphone_across_speaker", 6.0 + layer / 10, "%", 10)]))
        files.append(write(root, f"{tag}-pooled-uq", units_labels(encoder, layer, quantizer, k, "dev_pooled"),
                           [Metric("pnmi", 0.6 + layer / 100), Metric("phone_purity", 0.65),
                            Metric("cluster_purity", 0.15), Metric("codebook_perplexity", 200.5),
                            Metric("active_units", 250.0), Metric("bitrate", 210.25, "bit/s")]))
    for seed, value in ((0, 64.0), (1, 66.0)):  # two LM seeds of one row: mean 65, std sqrt(2)
        files.append(write(root, f"ll600-s{seed}", {**units_labels("spidr_base", 6, "kmeans", 256, "dev"),
                                                    "lm": "opt125m_ll600", "seed": seed,
                                                    "experiment": f"scaling_s{seed}"},
                           [lm("swuggy_all", value)]))
    for quantizer in ("continuous", "codebook_probs"):
        files.append(write(root, f"feat-{quantizer}", units_labels("spidr_base", 6, quantizer, None, "dev"),
                           [Metric("abx_triphone_within_speaker", 3.3, "%", 10),
                            Metric("abx_triphone_across_speaker", 3.6, "%", 10)]))
    files.append(write(root, "feat-map", units_labels("spidr_base", 6, "continuous", None, "dev_other"),
                       [Metric("word_map", 42.5, "%", 15)]))  # eval.word_map's metric
    return files


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    build_report(metrics_files(tmp_path), tmp_path / "report", NAMES)
    return tmp_path / "report"


def test_report_writes_each_table_in_the_published_schema(report_dir: Path) -> None:
    schema = report_dir / "published_schema"
    for name, columns in PUBLISHED_COLUMNS.items():
        assert list(pd.read_csv(schema / f"{name}.csv").columns) == columns, name
    slm = pd.read_csv(schema / "spoken-lm.csv")
    row = slm[(slm.model == "spidr_kmeans") & (slm.hours == 6000) & (slm.metric == "swuggy_invocab")].iloc[0]
    assert row["num_units"] == 256 and row["layer"] == 6 and row["score"] == 71.0
    codebook = slm[slm.model == "spidr_codebooks"]
    assert set(codebook["num_units"]) == {256} and set(codebook["layer"]) == {5}  # the codebook size
    assert set(slm.model) == {"spidr_kmeans", "spidr_codebooks", "wavlm_base_kmeans"}  # spoken-lm's own spelling
    seeded = slm[(slm.hours == 600)].iloc[0]
    assert seeded["score"] == 65.0 and seeded["metric"] == "swuggy_all"  # the mean of the two seeds
    uq = pd.read_csv(schema / "units-quality.csv")
    assert len(uq) == 3 * 6 and "active_codewords" in set(uq.metric) and "wavlm_kmeans" in set(uq.model)
    abx = pd.read_csv(schema / "abx-discrete.csv")
    assert len(abx) == 3 * 2 * 2 and set(abx.dataset) == {"dev-clean", "dev-other"}
    assert abx[(abx.model == "spidr_kmeans") & (abx.dataset == "dev-other") & (abx.speaker == "across")
               ].score.item() == pytest.approx(6.6)
    cont = pd.read_csv(schema / "abx-continuous.csv")
    assert set(cont.model) == {"spidr", "spidr_codebooks"} and set(cont.speaker) == {"within", "across"}
    assert pd.read_csv(schema / "map-continuous.csv").values.tolist() == [["spidr", "dev-other", 6, 42.5]]
    intervals = pd.read_csv(schema / "spoken-lm.intervals.csv")
    first = intervals[(intervals.model == "spidr_kmeans") & (intervals.hours == 6000)].iloc[0]
    assert first["ci_high"] - first["ci_low"] == pytest.approx(2.0) and first["ours_set"] == "dev"


def published_copy(report_dir: Path, out: Path, shift: float = 0.0) -> Path:
    """Their files as if published: our schema files (rounded like theirs), optionally shifted, one row dropped
    (only ours) and one added (only published)."""
    out.mkdir()
    for name in PUBLISHED_COLUMNS:
        frame = pd.read_csv(report_dir / "published_schema" / f"{name}.csv")
        frame["score"] = (frame["score"] + shift).round(3)
        if name == "spoken-lm":
            frame = frame[~((frame.model == "wavlm_base_kmeans") & (frame.metric == "ssc"))]
            frame = pd.concat([frame, pd.DataFrame([{"model": "text", "num_units": 4096, "layer": None,
                                                     "hours": 600, "metric": "tsc", "score": 75.43}])])
        frame.to_csv(out / f"{name}.csv", index=False)
    return out


def test_an_exact_copy_agrees_and_a_shifted_copy_is_flagged(report_dir: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    same = published_copy(report_dir, tmp_path / "same")
    published.main(["--ours", str(report_dir), "--published", str(same), "--out", str(tmp_path / "cmp")])
    printed = capsys.readouterr().out
    assert "spoken-lm: 15 row(s) in both, 0 flagged" in printed
    both = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert len(both) == 15 + 18 + 12 + 4 + 1 and both["within_precision"].all()
    assert not both["verdict"].str.startswith("OUTSIDE").any()
    one = pd.read_csv(tmp_path / "cmp" / "one_side.csv")
    assert one[["table", "side", "model", "metric"]].values.tolist() == [
        ["spoken-lm", "ours", "wavlm_base_kmeans", "ssc"], ["spoken-lm", "published", "text", "tsc"]]
    seeded = both[(both.table == "spoken-lm") & (both.hours == 600)].iloc[0]
    assert seeded["draws"] == 2 and seeded["verdict"] == "inside seed interval"
    for name in [*PUBLISHED_COLUMNS, "comparison.md", "comparison.json"]:
        assert (tmp_path / "cmp" / (name if "." in name else f"{name}.png")).is_file()

    shifted = published_copy(report_dir, tmp_path / "shifted", shift=1.5)  # beyond every ±1 CI of the LM rows
    published.main(["--ours", str(report_dir), "--published", str(shifted), "--out", str(tmp_path / "cmp2")])
    assert "spoken-lm: 15 row(s) in both, 14 flagged" in capsys.readouterr().out
    both = pd.read_csv(tmp_path / "cmp2" / "comparison.csv")
    lm_rows = both[both.table == "spoken-lm"]
    assert (lm_rows[lm_rows.draws == 1]["verdict"] == "OUTSIDE 95% CI").all()
    assert lm_rows[lm_rows.draws == 2]["verdict"].item() == "inside seed interval"  # 65 ± 12.7 holds 66.5
    assert lm_rows["difference"].round(6).eq(-1.5).all()
    units = both[both.table != "spoken-lm"]
    assert (units["verdict"] == "differs (no interval)").all() and not units["within_precision"].any()
    md = (tmp_path / "cmp2" / "comparison.md").read_text()
    assert "**OUTSIDE 95% CI**" in md and "Only published (1):" in md and "Only ours (1):" in md


def test_seed_interval_and_published_precision() -> None:
    low, high = seed_interval(65.0, math.sqrt(2), 2)
    half = stats.t.ppf(0.975, 1) * math.sqrt(2) * math.sqrt(1.5)
    assert (low, high) == pytest.approx((65.0 - half, 65.0 + half))
    assert precision("52.03", 52.03) == pytest.approx(0.005)
    assert precision("217.0", 217.0) == pytest.approx(0.05)
    assert precision("0.6546630859375", 0.6546630859375) == pytest.approx(0.6546630859375e-6)


def test_bad_published_files_name_file_and_line(report_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "units-quality.csv").write_text("model,layer,score\nspidr_kmeans,6,0.6\n")
    with pytest.raises(PublishedError, match=r"units-quality.csv: columns \['metric'\] missing"):
        published.run(report_dir, bad, tmp_path / "out")
    (bad / "units-quality.csv").write_text("model,layer,metric,score\nspidr_kmeans,6,pnmi,high\n")
    with pytest.raises(PublishedError, match=r"units-quality.csv:2: score 'high' is not a number"):
        published.run(report_dir, bad, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="published results folder not found"):
        published.run(report_dir, tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="build the report first"):
        published.run(tmp_path / "nowhere", bad, tmp_path / "out")


def test_names_from_the_config_and_their_errors() -> None:
    from pipeline.published import published_names

    config = yaml.safe_load((REPO / "configs/paper.yaml").read_text())
    names = published_names(config)
    assert names.lm_hours == {"opt125m": 6000, "opt125m_librilight600": 600, "opt125m_librilight60k": 60000}
    assert names.stem("dinosr_original", "abx-continuous") == "dinosr"
    assert names.stem("dinosr_original", "spoken-lm") == "dinosr_original"
    assert names.stem("wavlm_base", "spoken-lm") == "wavlm_base"
    assert names.stem("wavlm_base", "abx-discrete") == "wavlm"
    assert names.stem("spidr_release", "units-quality") == "spidr_release"  # not mapped: our name
    with pytest.raises(ConfigError, match=r"'report.published_names': unknown key\(s\) \['encoder'\]"):
        PublishedNames.from_dict({"encoder": {}})
    with pytest.raises(ConfigError, match=r"'report.published_names.encoders.x': unknown table\(s\) \['spoken_lm'\]"):
        PublishedNames.from_dict({"encoders": {"x": {"spoken_lm": "y"}}})
    config["report"]["published_names"]["corpus_hours"] = {"nosuch": 5}
    with pytest.raises(ConfigError, match="names corpus 'nosuch', which is not defined"):
        published_names(config)


def test_the_workflow_plans_the_comparison_when_published_is_set(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["report"] = {"published": str(tmp_path)}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(tmp_path), "--configfile", str(tmp_path / "c.yaml"), "-n", "--quiet", "rules"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "published" in {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


@pytest.mark.slow
def test_the_demo_through_the_whole_comparison_path(demo_corpus: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    """The real eval entry points on the generated demo (MFCC k-means units and a bigram unit LM, as
    test_eval_demo builds them), the report with the config's names, then eval.published against published-format
    copies of it: exact (every row agrees) and shifted (every row with an interval flagged)."""
    import json

    from eval import abx, report, slm21, storycloze, unit_quality
    from tests.test_eval_demo import K, bigram_scores, dedup, mfcc_50hz, mfcc_kmeans_units, units_of

    units_path = tmp_path / "units.parquet"
    _, train, centroids = mfcc_kmeans_units(demo_corpus, units_path)
    units = {"encoder": {"kind": "mfcc"}, "layer": 0, "quantizer": "kmeans", "k": K, "fit": {}, "name": "mfcc_km",
             "encoder_name": "mfcc"}
    job = json.dumps({"experiment": {"units": units, "eval_set": "demo"}})
    metrics = [tmp_path / "abx.json", tmp_path / "uq.json"]
    abx.main(["--item", str(demo_corpus / "dev" / "triphone.item"), "--units", str(units_path), "--out",
              str(metrics[0]), "--config", job])
    unit_quality.main(["--units", str(units_path), "--phones", str(demo_corpus / "dev" / "phones_100hz.jsonl"),
                       "--out", str(metrics[1]), "--config", job])
    train_units = [dedup(units_of(f, centroids)) for f in train]
    lm_job = json.dumps({"experiment": {"units": units, "lm": "bigram", "name": "mfcc_bigram", "eval_set": "demo"}})
    for task, folder in (("lexical", demo_corpus / "sLM21/lexical/dev"), ("sSC", demo_corpus / "storycloze/sSC")):
        scores = tmp_path / f"{task}.tsv"
        bigram_scores(train_units, {p.stem: dedup(units_of(mfcc_50hz(p), centroids))
                                    for p in sorted(folder.glob("*.wav"))}, scores)
        out = tmp_path / f"{task}.json"
        if task == "lexical":
            slm21.main([task, "--gold", str(folder / "gold.csv"), "--scores", str(scores), "--out", str(out),
                        "--submission", str(tmp_path / "submission"), "--config", lm_job])
        else:
            storycloze.main(["--dir", str(folder), "--scores", str(scores), "--task", task, "--out", str(out),
                             "--config", lm_job])
        metrics.append(out)
    names = {"encoders": {"mfcc": "mfcc"}, "datasets": {"demo": "dev-clean"}, "lm_hours": {"bigram": 0.34}}
    report.main(["--metrics", *map(str, metrics), "--out", str(tmp_path / "report"),
                 "--published-names", json.dumps(names)])
    schema = tmp_path / "report" / "published_schema"
    # in-vocab sWUGGY is not computed on the small demo (no band with items): no row, rather than a made-up one
    assert set(pd.read_csv(schema / "spoken-lm.csv").metric) == {"swuggy_all", "ssc"}
    assert len(pd.read_csv(schema / "units-quality.csv")) == 6 and len(pd.read_csv(schema / "abx-discrete.csv")) == 2

    exact = published_copy(tmp_path / "report", tmp_path / "exact")
    published.main(["--ours", str(tmp_path / "report"), "--published", str(exact), "--out", str(tmp_path / "c1")])
    both = pd.read_csv(tmp_path / "c1" / "comparison.csv")
    assert len(both) == 2 + 6 + 2 and not both["verdict"].str.startswith("OUTSIDE").any()
    shifted = published_copy(tmp_path / "report", tmp_path / "shifted", shift=60.0)  # beyond any accuracy CI
    published.main(["--ours", str(tmp_path / "report"), "--published", str(shifted), "--out", str(tmp_path / "c2")])
    both = pd.read_csv(tmp_path / "c2" / "comparison.csv")
    with_ci = both["ci_low"].notna()
    assert with_ci.sum() == 2 and (both[with_ci]["verdict"] == "OUTSIDE 95% CI").all()
    assert (both[~with_ci]["verdict"] == "differs (no interval)").all()
    assert "flagged" in capsys.readouterr().out
