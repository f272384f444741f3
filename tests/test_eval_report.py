"""eval.report: paper-shaped tables in CSV / Markdown / LaTeX, shared unit-level metrics, correlations, plots."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from eval.report import build_report, main, print_report
from eval.results import Metric, MetricsFileError, parse_labels, write_metrics

UNIT_CONV = {"slicing": "fastabx", "distance": "identical"}


def unit_metrics(root: Path, layer: int, abx_w: float, abx_a: float, pnmi: float, encoder: str = "spidr") -> Path:
    out = root / f"{encoder}-L{layer}-units.json"
    write_metrics(out, task="abx", labels={"encoder": encoder, "units": "kmeans", "layer": layer, "k": 16},
                  inputs={}, config={}, metrics=[Metric("abx_triphone_within_speaker", abx_w, "%", 10, UNIT_CONV),
                                                 Metric("abx_triphone_across_speaker", abx_a, "%", 10, UNIT_CONV),
                                                 Metric("pnmi", pnmi, "", 100, {"set": "dev"})])
    return out


def lm_metrics(root: Path, layer: int, swuggy: float, sblimp: float, tsc: float, *, encoder: str = "spidr",
               norm: str = "mean", lm: str = "tiny") -> Path:
    out = root / f"{encoder}-L{layer}-{lm}-{norm}-lm.json"
    conv = {"set": "dev", "normalisation": f"{norm} log-likelihood"}
    write_metrics(out, task="lexical", config={}, inputs={},
                  labels={"experiment": f"{encoder}-l{layer}", "encoder": encoder, "units": "kmeans", "layer": layer,
                          "k": 16, "lm": lm},
                  metrics=[Metric("swuggy_all", swuggy, "%", 4, conv),
                           Metric("swuggy_in_vocab", swuggy + 1, "%", 3, conv),
                           Metric("sblimp", sblimp, "%", 6, conv), Metric("tsc", tsc, "%", 3, conv)])
    return out


def test_report_tables_in_three_formats_and_correlations(tmp_path: Path) -> None:
    files = []
    for layer, abx, pnmi, sw in ((4, 20.0, 0.30, 55.0), (5, 15.0, 0.40, 60.0), (6, 10.0, 0.50, 66.0),
                                 (7, 12.0, 0.45, 64.0)):
        files += [unit_metrics(tmp_path, layer, abx, abx + 2, pnmi), lm_metrics(tmp_path, layer, sw, sw - 5, 70.0)]
    files.append(unit_metrics(tmp_path, 0, 30.0, 35.0, 0.2, encoder="mfcc"))  # baseline without an LM
    out = tmp_path / "report"
    index = build_report(files, out)
    assert index["rows"] == 5
    for name in ("metrics_long.csv", "table.csv", "table.md", "table.tex", "table_all_metrics.csv",
                 "correlations.csv", "correlations.md", "correlations.tex", "metric_vs_layer.png",
                 "correlations.png", "report.json", "published_schema/spoken-lm.csv",
                 "published_schema/abx-discrete.intervals.csv"):
        assert (out / name).is_file(), name
    # every table also in the published long format (eval.published): its model names need the quantizer label
    # (codebook / kmeans, which the workflow's metrics always carry), absent from these files: the header only
    slm = pd.read_csv(out / "published_schema/spoken-lm.csv")
    assert list(slm.columns) == ["model", "num_units", "layer", "hours", "metric", "score"] and slm.empty

    table = pd.read_csv(out / "table.csv")
    assert list(table.columns[:7]) == ["set", "encoder", "units", "quantizer", "layer", "k", "lm"]
    l6 = table[(table.encoder == "spidr") & (table.layer == 6)].iloc[0]
    assert l6["abx_triphone_within_speaker"] == 10.0 and l6["pnmi"] == 0.5 and l6["swuggy_all"] == 66.0
    assert l6["lm"] == "tiny" and l6["experiment"] == "spidr-l6"
    mfcc = table[table.encoder == "mfcc"].iloc[0]
    assert pd.isna(mfcc["lm"]) and pd.isna(mfcc["swuggy_all"]) and mfcc["abx_triphone_across_speaker"] == 35.0

    md = (out / "table.md").read_text()
    assert "| Encoder | Units | Layer | K | LM | ABX within (%) [1] |" in md  # no quantizer label: no column
    assert "| spidr | kmeans | 6 | 16 | tiny | 10.00 | 12.00 | 0.500 | 66.00 | 67.00 | 61.00 | 70.00 |" in md
    assert "| mfcc | kmeans | 0 | 16 | – | 30.00 | 35.00 | 0.200 | – | – | – | – |" in md
    assert "[4] sWUGGY all: normalisation: mean log-likelihood; set: dev" in md
    tex = (out / "table.tex").read_text()
    assert r"\begin{tabular}{lllllrrrrrrr}" in tex and r"ABX within (\%) [1]" in tex
    # Layer 6 is best everywhere (tSC ties at 70 on every row: all bold); no per-item scores, so nothing underlined.
    assert (r"spidr & kmeans & 6 & 16 & tiny & \textbf{10.00} & \textbf{12.00} & \textbf{0.500} & \textbf{66.00} & "
            r"\textbf{67.00} & \textbf{61.00} & \textbf{70.00} \\") in tex
    assert r"spidr & kmeans & 5 & 16 & tiny & 15.00 & 17.00 & 0.400 & 60.00 & 61.00 & 55.00 & \textbf{70.00} \\" in tex
    assert r"\underline" not in tex

    corr = pd.read_csv(out / "correlations.csv").set_index(["unit_metric", "lm_metric"])
    r = corr.loc[("abx_triphone_within_speaker", "swuggy_all")]
    want = pd.Series([20.0, 15.0, 10.0, 12.0]).corr(pd.Series([55.0, 60.0, 66.0, 64.0]))
    assert r["n"] == 4 and r["pearson_r"] == pytest.approx(want) and r["spearman_rho"] == pytest.approx(-1.0)
    assert "constant" in corr.loc[("pnmi", "tsc"), "note"]  # tSC is 70 everywhere
    assert "Spearman rho" in (out / "correlations.md").read_text()

    long = pd.read_csv(out / "metrics_long.csv")
    assert len(long) == 4 * 3 + 4 * 4 + 3 and json.loads(long["conventions"].iloc[0])["slicing"] == "fastabx"
    assert print_report(out).startswith("## Results")


def test_few_experiments_say_why_correlations_are_missing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    files = [unit_metrics(tmp_path, 6, 10.0, 12.0, 0.5), lm_metrics(tmp_path, 6, 66.0, 61.0, 70.0),
             unit_metrics(tmp_path, 5, 15.0, 16.0, 0.4, encoder="mfcc"),
             lm_metrics(tmp_path, 5, 55.0, 52.0, 60.0, encoder="mfcc")]
    main(["--metrics", *map(str, files), "--out", str(tmp_path / "r")])
    assert "note: no correlation computed" in capsys.readouterr().err
    notes = json.loads((tmp_path / "r" / "report.json").read_text())["notes"]
    assert any("needs at least 3" in n or "at least 3 rows" in n for n in notes)
    assert (tmp_path / "r" / "correlations.png").is_file()  # 2 points are still worth looking at
    # one row: nothing to scatter, and the figure says so instead of going missing
    build_report(files[:2], tmp_path / "one")
    assert any(n.startswith("correlation scatter not drawn")
               for n in json.loads((tmp_path / "one" / "report.json").read_text())["notes"])
    assert (tmp_path / "one" / "correlations.png").stat().st_size > 0
    assert "not computed: 2 row(s)" in (tmp_path / "r" / "correlations.md").read_text()
    main(["--print", str(tmp_path / "r")])
    printed = capsys.readouterr().out
    assert "| mfcc | kmeans | 5 | 16 | tiny |" in printed and "Note: no correlation computed" in printed


def test_mixed_conventions_are_marked_per_cell(tmp_path: Path) -> None:
    files = [lm_metrics(tmp_path, 6, 66.0, 61.0, 70.0, norm="mean", lm="a"),
             lm_metrics(tmp_path, 6, 64.0, 60.0, 71.0, norm="sum", lm="b")]
    build_report(files, tmp_path / "r")
    md = (tmp_path / "r" / "table.md").read_text()
    assert "66.00a" in md and "64.00b" in md
    assert "[1] sWUGGY all: set: dev\n" in md.replace("  \n", "\n")  # shared conventions once per column
    assert "[1a] sWUGGY all: normalisation: mean log-likelihood" in md
    assert "[1b] sWUGGY all: normalisation: sum log-likelihood" in md
    assert "metric_vs_layer.png" in json.loads((tmp_path / "r" / "report.json").read_text())["files"]


def test_conflicting_values_and_bad_files_are_errors(tmp_path: Path) -> None:
    a = lm_metrics(tmp_path / "a", 6, 66.0, 61.0, 70.0)
    b = lm_metrics(tmp_path / "b", 6, 65.0, 61.0, 70.0)
    with pytest.raises(ValueError, match="two values for swuggy_all"):
        build_report([a, b], tmp_path / "r")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"metrics": []}))
    with pytest.raises(MetricsFileError, match=r"bad\.json: not a metrics file"):
        build_report([bad], tmp_path / "r")
    with pytest.raises((ValueError, OSError), match=r"table\.md: not found"):
        main(["--print", str(tmp_path / "nothing")])


def test_labels_of_the_workflow_are_accepted_and_unknown_keys_named() -> None:
    labels = {"experiment": "e", "lm": None, "units": "spidr_l6_km", "encoder": "spidr", "encoder_kind": "spidr",
              "layer": 6, "quantizer": "kmeans", "k": 256}
    assert parse_labels(json.dumps(labels)) == labels
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['layers'\]"):
        parse_labels('{"layers": 6}')


def accuracy_file(root: Path, name: str, outcomes: dict[str, float], *, seed: int | None = None, lm: str = "tiny",
                  layer: int = 6, eval_set: str | None = None) -> Path:
    """A tSC metrics file from per-pair outcomes, as eval.storycloze writes it (value, CI, items)."""
    import pandas as pd

    from eval.results import accuracy

    out = root / f"{name}-{seed}-{eval_set}.json"
    labels = {"experiment": name, "encoder": "spidr", "units": "kmeans", "layer": layer, "k": 16, "lm": lm,
              "seed": seed, "set": eval_set}
    write_metrics(out, task="tSC", config={}, inputs={}, labels=labels,
                  metrics=[accuracy("tsc", pd.Series(outcomes), {"set": "test"}, "story pairs")])
    return out


def test_cells_show_ci_seeds_mean_std_and_the_set_column(tmp_path: Path) -> None:
    good = {f"p{i}": 1.0 for i in range(20)}
    half = {f"p{i}": float(i % 2) for i in range(20)}
    files = [accuracy_file(tmp_path, "all_right", good, layer=4),
             accuracy_file(tmp_path, "half_s0", half, seed=0, lm="small"),
             accuracy_file(tmp_path, "half_s1", {**half, "p0": 1.0}, seed=1, lm="small")]
    index = build_report(files, tmp_path / "r")
    assert index["rows"] == 2
    table = pd.read_csv(tmp_path / "r" / "table.csv")
    right = table[table.layer == 4].iloc[0]
    assert (right["tsc"], right["tsc__ci_low"], right["tsc__ci_high"], right["tsc__draws"]) == (100, 100, 100, 1)
    seeds = table[table.layer == 6].iloc[0]
    assert seeds["tsc"] == pytest.approx(52.5) and seeds["tsc__draws"] == 2
    assert seeds["tsc__std"] == pytest.approx(pd.Series([50.0, 55.0]).std())
    md = (tmp_path / "r" / "table.md").read_text()
    assert "| Encoder | Units | Layer | K | LM | Seeds | tSC [1] |" in md
    assert "| spidr | kmeans | 4 | 16 | tiny | 1 | 100.00 ± 0.00 |" in md
    assert "| spidr | kmeans | 6 | 16 | small | 2 | 52.50 ± 3.54 |" in md
    assert "95% bootstrap confidence interval over items" in md and "standard deviation over seeds" in md

    # Two sets in one report: one row per set, and a Set column.
    both = [accuracy_file(tmp_path, "x", good, eval_set="dev"), accuracy_file(tmp_path, "x", half, eval_set="test")]
    build_report(both, tmp_path / "sets")
    md = (tmp_path / "sets" / "table.md").read_text()
    assert "| Set | Encoder |" in md and "| dev | spidr |" in md and "| test | spidr |" in md


def test_paired_tests_underline_ties_and_compare_prints_p(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    best = {f"p{i}": 1.0 for i in range(30)}
    close = {**best, "p0": 0.0}  # one item worse: not significantly different
    far = {f"p{i}": float(i % 3 == 0) for i in range(30)}  # much worse
    files = [accuracy_file(tmp_path, "best", best, layer=4), accuracy_file(tmp_path, "close", close, layer=5),
             accuracy_file(tmp_path, "far", far, layer=6)]
    build_report(files, tmp_path / "r")
    sig = pd.read_csv(tmp_path / "r" / "significance.csv").set_index("experiment")
    assert sig.loc["best", "note"] == "best" and sig.loc["close", "p_value"] == pytest.approx(1.0)
    assert sig.loc["far", "p_value"] < 0.001
    tex = (tmp_path / "r" / "table.tex").read_text()
    assert r"\textbf{100.00 ± 0.00}" in tex and r"\underline{96.67 ± " in tex and r"\underline{33.33" not in tex
    main(["--metrics", *map(str, files), "--compare", "close", "far"])
    out = capsys.readouterr().out
    assert "tsc: close 96.67 vs far 33.33 (difference +63.33 over 30 items), p = " in out
    with pytest.raises((ValueError, OSError), match="no experiment named 'nope'"):
        main(["--metrics", *map(str, files), "--compare", "close", "nope"])
