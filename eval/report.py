"""Collect every experiment's metrics JSON into paper-style tables (CSV, Markdown, LaTeX), correlations and plots.

Usage:
    python -m eval.report --metrics M1.json M2.json ... --out REPORT_DIR
    python -m eval.report --metrics M1.json M2.json ... --compare EXP_A EXP_B     (paired tests, printed)
    python -m eval.report --print REPORT_DIR

Rows are (encoder, units, layer, K, LM); columns are the SpidR paper's: triphone ABX within / across speaker,
PNMI, sWUGGY all / in-vocab, sBLIMP, tSC, sSC. A metrics file without an `lm` label (ABX, PNMI: properties of the
units alone) is shared by every row with the same encoder, units, layer and K. Every cell keeps its conventions:
the Markdown and LaTeX tables carry them as per-column footnotes (with a letter on the cells when one column mixes
conventions), the long CSV as columns. Each accuracy shows `value ± half-width of its 95% bootstrap CI over items`;
rows that are several seed draws of one configuration (files differing only in their `seed` / `kmeans_seed`
labels) show mean ± std over the seeds. With several evaluation sets (the `set` label), a Set column appears.
The LaTeX table bolds the best cell of each column and underlines the cells not significantly different from it
(paired permutation test over the same items, eval.stats); significance.csv has every p-value.

REPORT_DIR gets: metrics_long.csv (one row per number), table.{csv,md,tex}, table_all_metrics.csv, significance.csv,
correlations.{csv,md,tex} (Pearson and Spearman of ABX / PNMI against each LM metric across rows),
metric_vs_layer.png, correlations.png, report.json (inputs, notes on anything that could not be computed) and
published_schema/: each table also in the long format of the SpidR paper's published CSVs (spoken-lm.csv,
units-quality.csv, abx-discrete.csv, abx-continuous.csv, map-continuous.csv: same columns and metric names, our
encoder names mapped to theirs by `--published-names`, eval.published.PublishedNames), so that a reproduction is a
file to diff, with our intervals beside each in <table>.intervals.csv (what `python -m eval.published` compares).
Every file is always written: a plot that cannot be drawn (too few rows, no layer labels) is a figure saying why,
and the same note is in table.md and report.json.
"""

from __future__ import annotations

import argparse
import json
import math
import string
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.config import loads
from common.io import atomic_write, atomic_write_json, atomic_write_text, provenance
from eval import stats
from eval.published import SCHEMA_DIR, PublishedNames, published_tables, write_schema
from eval.results import LABEL_KEYS, read_metrics

# The last one, lm, is what unit metrics lack; `set` is the evaluation set (several in one run: a set column).
ROW_KEYS = ("set", "encoder", "units", "quantizer", "layer", "k", "lm")
ROW_TITLES = {"set": "Set", "encoder": "Encoder", "units": "Units", "quantizer": "Quantizer", "layer": "Layer",
              "k": "K", "lm": "LM"}
SEED_KEYS = ("seed", "kmeans_seed")


class ReportError(ValueError):
    """Metrics that cannot be assembled into one report (no metric, conflicting values, unknown experiment)."""


@dataclass(frozen=True)
class Column:
    metric: str
    title: str
    digits: int
    lower_is_better: bool = False


COLUMNS = (
    Column("abx_triphone_within_speaker", "ABX within (%)", 2, lower_is_better=True),
    Column("abx_triphone_across_speaker", "ABX across (%)", 2, lower_is_better=True),
    Column("abx_phoneme_within_context_within_speaker", "Phoneme ABX within (%)", 2, lower_is_better=True),
    Column("abx_phoneme_within_context_across_speaker", "Phoneme ABX across (%)", 2, lower_is_better=True),
    Column("pnmi", "PNMI", 3),
    Column("swuggy_all", "sWUGGY all", 2),
    Column("swuggy_in_vocab", "sWUGGY in-vocab", 2),
    Column("sblimp", "sBLIMP", 2),
    Column("tsc", "tSC", 2),
    Column("ssc", "sSC", 2),
)
UNIT_METRICS = ("abx_triphone_within_speaker", "abx_triphone_across_speaker", "pnmi")
LM_METRICS = ("swuggy_all", "swuggy_in_vocab", "sblimp", "tsc", "ssc")
TITLE = {c.metric: c.title for c in COLUMNS}
MIN_CORRELATION_POINTS = 3


def conventions_json(conv: dict[str, Any]) -> str:
    """Conventions as one canonical JSON string: hashable, comparable, and still machine-readable in the CSVs."""
    return json.dumps({k: v for k, v in conv.items() if v not in (None, "")}, sort_keys=True, default=str)


def conventions_text(items: dict[str, Any]) -> str:
    return "; ".join(f"{k}: {v}" for k, v in sorted(items.items()))


def _label(value: Any) -> Any:
    """Label values as they will be grouped: ints stay ints ('6' -> 6), everything else a string or None."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value)
    return int(text) if text.lstrip("-").isdigit() else text


def long_table(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Every number of every metrics file, one row each, with the file's labels and the number's conventions."""
    rows = []
    for path in paths:
        doc = read_metrics(path)
        labels = {k: _label(doc["labels"].get(k)) for k in LABEL_KEYS}
        for m in doc["metrics"]:
            ci = m.get("ci95") or [None, None]
            rows.append({**labels, "task": doc["task"], "metric": m["metric"], "value": m["value"],
                         "ci_low": ci[0], "ci_high": ci[1], "unit": m.get("unit", ""), "n": m.get("n"),
                         "items": m.get("items"),
                         "conventions": conventions_json(m.get("conventions", {})),
                         "code_version": (doc.get("provenance") or {}).get("code_version"), "source": str(path),
                         "has_lm": doc["labels"].get("lm") is not None})
    if not rows:
        raise ReportError("no metric in the given files")
    return _as_objects(pd.DataFrame(rows), rows, (*LABEL_KEYS, "items"))


def _as_objects(frame: pd.DataFrame, rows: list[dict], keys: Sequence[str]) -> pd.DataFrame:
    """Label columns as Python values (pandas would turn None into NaN and ints into floats, breaking matching)."""
    for k in keys:
        frame[k] = pd.Series([r[k] for r in rows], index=frame.index, dtype=object)
    return frame


def _key(row: dict | pd.Series) -> tuple:
    return tuple(row[k] for k in ROW_KEYS)


def _sort_key(key: tuple) -> tuple:
    # None first, numbers before strings, so layers sort 1, 2, ..., 12 and K 50, 100, 256.
    return tuple((0, 0, "") if v is None else (1, v, "") if isinstance(v, int) else (2, 0, str(v)) for v in key)


def _draw(rec: dict) -> tuple:
    """Which seed draw a number is: (LM seed, k-means seed); None where the file does not say."""
    return tuple(rec.get(k) for k in SEED_KEYS)


def _cell(metric: str, key: tuple, draws: dict[tuple, dict]) -> dict[str, Any]:
    """One table cell from its seed draws: the value and CI of a single draw, or mean ± std over several."""
    recs = [draws[d] for d in sorted(draws, key=_sort_key)]
    conventions = {r["conventions"] for r in recs}
    if len(conventions) > 1:
        raise ReportError(f"seed draws of {metric} for {dict(zip(ROW_KEYS, key, strict=True))} were computed with "
                          f"different conventions: {sorted(conventions)} (in {[r['source'] for r in recs]})")
    if len(recs) == 1:
        r = recs[0]
        return {"value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "std": None, "draws": 1,
                "conventions": r["conventions"], "items": r["items"]}
    values = [r["value"] for r in recs if r["value"] is not None]
    # Paired tests on a seed-aggregated row compare per-item scores averaged over the seeds (same items only).
    item_maps = [r["items"] for r in recs]
    items = None
    if all(m is not None for m in item_maps) and all(m.keys() == item_maps[0].keys() for m in item_maps):
        items = {i: float(np.mean([m[i] for m in item_maps])) for i in item_maps[0]}
    return {"value": float(np.mean(values)) if values else None, "ci_low": None, "ci_high": None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None, "draws": len(values),
            "conventions": recs[0]["conventions"], "items": items}


def assemble(long: pd.DataFrame) -> pd.DataFrame:
    """One row per (set, encoder, units, quantizer, layer, k, lm) with every metric (value, CI, conventions) it has.

    Unit-level files (no `lm` label) fill every row with the same labels but the LM; when there is
    none, they make their own row with an empty LM. Files that differ only in their seed labels (LM seed, k-means
    seed) are draws of one row, which shows their mean ± std. Two different values for one draw are an error.
    Per metric, the wide table has `M` (value), `M__ci_low`, `M__ci_high` (95% bootstrap CI of a single draw),
    `M__std` and `M__draws` (seed draws), `M__conventions` and `M__items` (per-item scores, for paired tests).
    """
    keys = {_key(r) for r in long[long["has_lm"]].to_dict("records")}
    cells: dict[tuple, dict[str, dict[tuple, dict[str, Any]]]] = {}
    experiments: dict[tuple, set[str]] = {}

    def put(key: tuple, rec: dict) -> None:
        draws = cells.setdefault(key, {}).setdefault(rec["metric"], {})
        old = draws.get(_draw(rec))
        if old is not None and old["source"] != rec["source"] and old["value"] != rec["value"]:
            seeds = {k: v for k, v in zip(SEED_KEYS, _draw(rec), strict=True) if v is not None}
            raise ReportError(f"two values for {rec['metric']} of {dict(zip(ROW_KEYS, key, strict=True))}"
                              f"{f' {seeds}' if seeds else ''}: {old['value']} in {old['source']} and "
                              f"{rec['value']} in {rec['source']}")
        draws[_draw(rec)] = rec
        if rec["experiment"] is not None:
            experiments.setdefault(key, set()).add(str(rec["experiment"]))

    for rec in long.to_dict("records"):
        if rec["has_lm"]:
            put(_key(rec), rec)
            continue
        targets = [k for k in keys if k[:-1] == _key(rec)[:-1]] or [(*_key(rec)[:-1], None)]
        for key in targets:
            put(key, rec)
    rows = []
    for key in sorted(cells, key=_sort_key):
        row: dict[str, Any] = dict(zip(ROW_KEYS, key, strict=True))
        row["experiment"] = ", ".join(sorted(experiments.get(key, set()))) or None
        for metric, draws in cells[key].items():
            cell = _cell(metric, key, draws)
            row[metric] = cell["value"]
            for part in ("ci_low", "ci_high", "std", "draws", "conventions", "items"):
                row[f"{metric}__{part}"] = cell[part]
        rows.append(row)
    wide = _as_objects(pd.DataFrame(rows), rows, (*ROW_KEYS, "experiment"))
    for column in [c for c in wide.columns if c.endswith("__items")]:
        wide[column] = pd.Series([r.get(column) for r in rows], index=wide.index, dtype=object)
    return wide


def public_columns(wide: pd.DataFrame) -> list[str]:
    """The wide table's columns without the per-item scores (which stay in the metrics files)."""
    return [c for c in wide.columns if not c.endswith("__items")]


# ---------------------------------------------------------------------------------------------------------------
# Paper-shaped tables


def _fmt(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def shown_keys(wide: pd.DataFrame) -> list[str]:
    """Row label columns worth a table column: those some row sets (an all-empty Quantizer column is noise); the
    set column only when the report holds more than one set."""
    keys = [k for k in ROW_KEYS if wide[k].map(lambda v: v is not None).any()]
    if "set" in keys and wide["set"].map(str).nunique() < 2:
        keys.remove("set")
    return keys or ["encoder"]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def cell_text(row: pd.Series, col: Column) -> str:
    """`value ± u`: u is the half-width of the 95% bootstrap CI of one draw, or the std over seed draws."""
    value = row.get(col.metric)
    text = _fmt(value, col.digits)
    if _missing(value):
        return text
    draws, std = row.get(f"{col.metric}__draws"), row.get(f"{col.metric}__std")
    low, high = row.get(f"{col.metric}__ci_low"), row.get(f"{col.metric}__ci_high")
    if not _missing(draws) and draws > 1 and not _missing(std):
        return f"{text} ± {std:.{col.digits}f}"
    if not _missing(low) and not _missing(high):
        return f"{text} ± {(high - low) / 2:.{col.digits}f}"
    return text


def paper_cells(wide: pd.DataFrame) -> tuple[list[str], list[list[str]], list[str], list[Column]]:
    """Header, body and footnotes of the paper table; cells get a letter when their column mixes conventions."""
    columns = [c for c in COLUMNS if c.metric in wide.columns]
    keys = shown_keys(wide)
    draws = [wide[f"{c.metric}__draws"] for c in columns]
    seeded = any(d.map(lambda v: not _missing(v) and v > 1).any() for d in draws)
    header = [ROW_TITLES[k] for k in keys] + (["Seeds"] if seeded else []) + [c.title for c in columns]
    first = len(header) - len(columns)
    footnotes, markers = [], {}
    if any(wide[f"{c.metric}__ci_low"].notna().any() for c in columns):
        footnotes.append("± : half-width of the 95% bootstrap confidence interval over items (exact bounds in "
                         "table.csv)" + ("; on rows over several seeds, the standard deviation over seeds instead "
                                         "(mean ± std; the Seeds column counts them)" if seeded else ""))
    elif seeded:
        footnotes.append("± : standard deviation over seeds (mean ± std; the Seeds column counts them)")
    for number, col in enumerate(columns, start=1):
        conv = wide.get(f"{col.metric}__conventions")
        distinct = [] if conv is None else sorted({c for c in conv.dropna() if c})
        dicts = [json.loads(c) for c in distinct]
        # What all cells of the column share goes in the column's footnote, what differs in one per letter.
        common = {k: v for k, v in dicts[0].items() if all(d.get(k) == v for d in dicts)} if dicts else {}
        if common:
            footnotes.append(f"[{number}] {col.title}: {conventions_text(common)}")
        if len(distinct) > 1:
            for letter, text, d in zip(string.ascii_lowercase, distinct, dicts, strict=False):
                markers[(col.metric, text)] = letter
                rest = conventions_text({k: v for k, v in d.items() if k not in common}) or "(nothing else)"
                footnotes.append(f"[{number}{letter}] {col.title}: {rest}")
        header[first + number - 1] += f" [{number}]"
    body = []
    for _, row in wide.iterrows():
        line = ["–" if row.get(k) is None or pd.isna(row.get(k)) else str(row[k]) for k in keys]
        if seeded:
            counts = [row.get(f"{c.metric}__draws") for c in columns]
            line.append(str(max((int(v) for v in counts if not _missing(v)), default=1)))
        for col in columns:
            text = cell_text(row, col)
            marker = markers.get((col.metric, row.get(f"{col.metric}__conventions")))
            line.append(f"{text}{marker}" if marker and text != "–" else text)
        body.append(line)
    return header, body, footnotes, columns


def significance(wide: pd.DataFrame, columns: Sequence[Column]) -> pd.DataFrame:
    """Per column, the best row and the paired test of every other row against it over the same items.

    Rows are compared within one set only. A row whose per-item scores are missing (ABX, PNMI) or over other
    items than the best row's gets no test (p empty, with the reason).
    """
    out = []
    sets = wide["set"].map(str)
    for col in columns:
        for set_name in sorted(sets.unique()):
            part = wide[(sets == set_name) & wide[col.metric].notna()]
            if part.empty:
                continue
            values = part[col.metric].astype(float)
            best = values.idxmin() if col.lower_is_better else values.idxmax()
            best_items = part.at[best, f"{col.metric}__items"]
            for index, row in part.iterrows():
                rec = {"metric": col.metric, "set": wide.at[index, "set"], "row": int(index), "best_row": int(best),
                       "experiment": row["experiment"], "best_experiment": part.at[best, "experiment"],
                       "value": float(row[col.metric]), "best_value": float(values[best]), "difference": None,
                       "p_value": None, "n": None, "note": ""}
                if values[index] == values[best]:
                    rec["note"] = "best"  # ties at the best value are all best
                elif best_items is None or row[f"{col.metric}__items"] is None:
                    rec["note"] = "no per-item scores (no paired test)"
                else:
                    try:
                        x, y = stats.paired_items(row[f"{col.metric}__items"], best_items, col.metric)
                    except ValueError as err:
                        rec["note"] = str(err)
                    else:
                        test = stats.paired_test(x, y)
                        rec.update(difference=100 * test.difference, p_value=test.p_value, n=test.n,
                                   note=test.method)
                out.append(rec)
    names = ["metric", "set", "row", "best_row", "experiment", "best_experiment", "value", "best_value",
             "difference", "p_value", "n", "note"]
    return pd.DataFrame(out, columns=names)


def cell_styles(sig: pd.DataFrame, wide: pd.DataFrame, columns: Sequence[Column]) -> dict[tuple[int, int], str]:
    """(body row, column index) -> "best" or "tied" (not significantly different from the best: p >= ALPHA)."""
    first = len(paper_cells(wide)[0]) - len(columns)
    position = {index: i for i, index in enumerate(wide.index)}
    col_index = {c.metric: first + j for j, c in enumerate(columns)}
    styles = {}
    for rec in sig.itertuples():
        if rec.note == "best":
            styles[(position[rec.row], col_index[rec.metric])] = "best"
        elif rec.p_value is not None and not pd.isna(rec.p_value) and rec.p_value >= stats.ALPHA:
            styles[(position[rec.row], col_index[rec.metric])] = "tied"
    return styles


def compare(wide: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Paired tests of experiment `a` against `b` on every accuracy both have over the same items, per set."""
    def rows_of(name: str) -> pd.DataFrame:
        hit = wide[wide["experiment"].map(lambda e: e is not None and name in str(e).split(", "))]
        if hit.empty:
            known = sorted({n for e in wide["experiment"].dropna() for n in str(e).split(", ")})
            raise ReportError(f"--compare: no experiment named {name!r} in the report; known: {known}")
        return hit

    ra, rb = rows_of(a), rows_of(b)
    out = []
    for _, x in ra.iterrows():
        for _, y in rb[rb["set"].map(str) == str(x["set"])].iterrows():
            for col in COLUMNS:
                ia, ib = x.get(f"{col.metric}__items"), y.get(f"{col.metric}__items")
                if ia is None or ib is None or _missing(ia) or _missing(ib):
                    continue
                xa, xb = stats.paired_items(ia, ib, f"--compare {a} {b}: {col.metric}")
                test = stats.paired_test(xa, xb)
                out.append({"set": x["set"], "metric": col.metric, "a": a, "b": b, "n": test.n,
                            "value_a": 100 * test.mean_a, "value_b": 100 * test.mean_b,
                            "difference": 100 * test.difference, "p_value": test.p_value, "test": test.method})
    if not out:
        raise ReportError(f"--compare {a} {b}: no accuracy with per-item scores in both (paired tests need the "
                          "sWUGGY / sBLIMP / tSC / sSC metrics files of both experiments on the same set)")
    return pd.DataFrame(out)


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "<": r"\textless{}", ">": r"\textgreater{}", "–": "--"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)


def latex_table(header: list[str], body: list[list[str]], footnotes: list[str], *, align: str,
                styles: dict[tuple[int, int], str] | None = None) -> str:
    """A booktabs tabular; `styles` bolds the best cell of a column ("best") and underlines the cells not
    significantly different from it ("tied")."""
    styles = styles or {}
    wrap = {"best": r"\textbf{%s}", "tied": r"\underline{%s}"}

    def cell(i: int, j: int, text: str) -> str:
        style = styles.get((i, j))
        return wrap[style] % latex_escape(text) if style else latex_escape(text)

    lines = [r"\begin{tabular}{" + align + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(i, j, c) for j, c in enumerate(row)) + r" \\" for i, row in enumerate(body)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if footnotes:
        lines += ["", r"\begin{flushleft}\footnotesize"] + [latex_escape(f) + r"\\" for f in footnotes]
        lines += [r"\end{flushleft}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# Correlations and plots


def correlations(wide: pd.DataFrame) -> pd.DataFrame:
    """Pearson r and Spearman rho of each unit metric against each LM metric, over rows that have both."""
    rows = []
    for um in UNIT_METRICS:
        for lm in LM_METRICS:
            if um not in wide.columns or lm not in wide.columns:
                continue  # no input has this metric at all: nothing to say
            pair = wide[[um, lm]].dropna().astype(float)
            n, r, rho, note = len(pair), None, None, ""
            if n < MIN_CORRELATION_POINTS:
                note = f"not computed: {n} row(s) with both metrics (needs at least {MIN_CORRELATION_POINTS})"
            elif pair[um].nunique() < 2 or pair[lm].nunique() < 2:
                note = "not computed: one of the metrics is constant over these rows"
            else:
                r = float(np.corrcoef(pair[um], pair[lm])[0, 1])
                rho = float(np.corrcoef(pair[um].rank(), pair[lm].rank())[0, 1])
            rows.append({"unit_metric": um, "lm_metric": lm, "n": n, "pearson_r": r, "spearman_rho": rho,
                         "note": note})
    return pd.DataFrame(rows, columns=["unit_metric", "lm_metric", "n", "pearson_r", "spearman_rho", "note"])


def plot_metric_vs_layer(wide: pd.DataFrame, out: Path) -> str | None:
    """One panel per metric, x = layer, a line per (encoder, units, K, LM); returns a note when impossible."""
    layered = wide[wide["layer"].map(lambda v: isinstance(v, int | np.integer))]
    metrics = [c for c in COLUMNS if c.metric in layered.columns and layered[c.metric].notna().any()]
    if layered.empty or not metrics:
        return "metric vs layer not drawn: no row has both a numeric layer label and a metric"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    ncols = min(4, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False)
    names = layered.apply(lambda r: " / ".join(str(r[k]) for k in ("encoder", "units", "quantizer", "k", "lm")
                                               if r[k] is not None and not pd.isna(r[k])), axis=1)
    colours = {label: f"C{i % 10}" for i, label in enumerate(sorted(set(names)))}  # one colour per line everywhere
    for ax, col in zip(axes.flat, metrics, strict=False):
        for label, group in layered.groupby(names, sort=True):
            g = group[group[col.metric].notna()].sort_values("layer")
            if len(g):
                ax.plot(g["layer"].astype(int), g[col.metric], marker="o", color=colours[label], label=label)
        ax.set_title(col.title + (" (lower is better)" if col.lower_is_better else ""), fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles = [Line2D([], [], color=c, marker="o", label=label) for label, c in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(3, len(handles)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_figure(fig, out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return None


def plot_correlations(wide: pd.DataFrame, corr: pd.DataFrame, out: Path) -> str | None:
    """Scatter of each unit metric against each LM metric, r and rho in the panel title."""
    units = [m for m in UNIT_METRICS if m in wide.columns]
    lms = [m for m in LM_METRICS if m in wide.columns]
    if not units or not lms or len(corr) == 0 or corr["n"].max() < 2:
        return "correlation scatter not drawn: fewer than 2 rows have both a unit metric (ABX / PNMI) and an LM metric"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(units), len(lms), figsize=(3.2 * len(lms), 3 * len(units)), squeeze=False)
    stats = corr.set_index(["unit_metric", "lm_metric"])
    for i, um in enumerate(units):
        for j, lm in enumerate(lms):
            ax = axes[i][j]
            pair = wide[[um, lm, "experiment"]].dropna(subset=[um, lm])
            ax.scatter(pair[um], pair[lm], s=18)
            s = stats.loc[(um, lm)]
            title = (f"r={s['pearson_r']:.2f}, rho={s['spearman_rho']:.2f} (n={s['n']})"
                     if s["pearson_r"] is not None and not pd.isna(s["pearson_r"]) else f"n={s['n']}: r not computed")
            ax.set_title(title, fontsize=8)
            ax.set_xlabel(TITLE[um], fontsize=8)
            ax.set_ylabel(TITLE[lm], fontsize=8)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out, dpi=120)
    plt.close(fig)
    return None


def save_figure(fig, out: Path, **kwargs: Any) -> None:
    """Save a matplotlib figure atomically, in the format its file name says."""
    with atomic_write(out) as tmp:
        fig.savefig(tmp, format=Path(out).suffix.lstrip("."), **kwargs)


def note_figure(out: Path, text: str) -> None:
    """A figure that says why the plot it stands for could not be drawn."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6, 1.6))
    fig.text(0.5, 0.5, textwrap.fill(text, 70), ha="center", va="center", fontsize=10)
    save_figure(fig, out, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------


def build_report(paths: Sequence[str | Path], out: str | Path,
                 published_names: PublishedNames | None = None) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    long = long_table(paths)
    wide = assemble(long)
    notes: list[str] = []
    for path in paths:  # what the evaluations warned about (collapsed units, LMs over many epochs, dropped items)
        for warning in (read_metrics(path).get("details") or {}).get("warnings") or []:
            notes += [] if warning in notes else [warning]
    tables, schema_notes = published_tables(wide, published_names or PublishedNames())
    write_schema(tables, out / SCHEMA_DIR)
    notes += schema_notes

    atomic_write_text(out / "metrics_long.csv", long.drop(columns=["has_lm", "items"]).to_csv(index=False))
    atomic_write_text(out / "table_all_metrics.csv", wide[public_columns(wide)].to_csv(index=False))
    header, body, footnotes, columns = paper_cells(wide)
    if not columns:
        notes.append("the paper table has no metric column: none of the inputs holds "
                     + ", ".join(c.metric for c in COLUMNS))
    paper = pd.DataFrame(body, columns=header)
    parts = ("", "__ci_low", "__ci_high", "__std", "__draws")
    table_columns = [f"{c.metric}{part}" for c in columns for part in parts]
    atomic_write_text(out / "table.csv", wide[[*ROW_KEYS, "experiment", *table_columns]].to_csv(index=False))
    sig = significance(wide, columns)
    atomic_write_text(out / "significance.csv", sig.to_csv(index=False))
    styles = cell_styles(sig, wide, columns)
    if styles:
        footnotes = [*footnotes, "LaTeX: bold = best in its column (per set); underlined = not significantly "
                     f"different from it (paired permutation test over the same items, p >= {stats.ALPHA}); "
                     "every p-value in significance.csv"]
    corr = correlations(wide)
    for name, note in (("metric_vs_layer.png", plot_metric_vs_layer(wide, out / "metric_vs_layer.png")),
                       ("correlations.png", plot_correlations(wide, corr, out / "correlations.png"))):
        if note:  # the figure then states why it is empty, so every report has the same files
            notes.append(note)
            note_figure(out / name, note)
    if corr["pearson_r"].notna().sum() == 0:
        most = int(corr["n"].max()) if len(corr) else 0
        notes.append(f"no correlation computed: each needs at least {MIN_CORRELATION_POINTS} rows with both a "
                     f"unit metric (ABX / PNMI) and an LM metric, and this report has {most}")

    md = ["## Results", "", markdown_table(list(paper.columns), body)]
    md += [f"{f}  " for f in footnotes] + ([""] if footnotes else [])
    md += [f"Note: {n}  " for n in notes]
    atomic_write_text(out / "table.md", "\n".join(md).rstrip() + "\n")
    align = "l" * (len(header) - len(columns)) + "r" * len(columns)
    atomic_write_text(out / "table.tex", latex_table(list(paper.columns), body, footnotes, align=align,
                                                     styles=styles))

    corr_body = [[TITLE[r.unit_metric], TITLE[r.lm_metric], str(r.n), _fmt(r.pearson_r, 3), _fmt(r.spearman_rho, 3),
                  r.note] for r in corr.itertuples()]
    corr_header = ["Unit metric", "LM metric", "n", "Pearson r", "Spearman rho", "Note"]
    atomic_write_text(out / "correlations.csv", corr.to_csv(index=False))
    atomic_write_text(out / "correlations.md", "## Correlation of unit quality with LM metrics across rows\n\n"
                      + markdown_table(corr_header, corr_body))
    atomic_write_text(out / "correlations.tex", latex_table(corr_header, corr_body, [], align="llrrrl"))
    index = {"inputs": [str(p) for p in paths], "rows": len(wide), "notes": notes,
             "files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")), **provenance(None)}
    atomic_write_json(out / "report.json", index)
    return index


def print_report(folder: str | Path) -> str:
    folder = Path(folder)
    parts = [folder / "table.md", folder / "correlations.md"]
    missing = [p for p in parts if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: not found; build the report first (python -m eval.report --metrics "
                                f"... --out {folder})")
    return "\n".join(p.read_text() for p in parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--metrics", nargs="+", type=Path, help="metrics JSON files from eval.*")
    mode.add_argument("--print", dest="print_dir", type=Path, help="print REPORT_DIR's Markdown tables")
    parser.add_argument("--out", type=Path, help="report folder (with --metrics)")
    parser.add_argument("--published-names", default=None, metavar="JSON",
                        help="how our names read in the published tables (eval.published.PublishedNames; the "
                             "workflow passes its report.published_names); default: our names as they are")
    parser.add_argument("--compare", nargs=2, metavar=("EXP_A", "EXP_B"),
                        help="with --metrics: paired tests of two experiments over the same items, per accuracy "
                             "(printed; with --out also written to REPORT_DIR/compare_EXP_A_EXP_B.csv)")
    args = parser.parse_args(argv)
    if args.print_dir is not None:
        print(print_report(args.print_dir), end="")
        return
    if args.compare is not None:
        result = compare(assemble(long_table(args.metrics)), *args.compare)
        if args.out is not None:
            atomic_write_text(args.out / f"compare_{args.compare[0]}_{args.compare[1]}.csv",
                              result.to_csv(index=False))
        for r in result.itertuples():
            print(f"{r.set} {r.metric}: {r.a} {r.value_a:.2f} vs {r.b} {r.value_b:.2f} (difference "
                  f"{r.difference:+.2f} over {r.n} items), p = {r.p_value:.4g} ({r.test})")
        return
    if args.out is None:
        parser.error("--metrics needs --out REPORT_DIR")
    names = (loads(PublishedNames, args.published_names, "--published-names", path="--published-names")
             if args.published_names is not None else None)
    index = build_report(args.metrics, args.out, names)
    for note in index["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"report: {index['rows']} row(s) -> {args.out}")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
