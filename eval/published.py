"""Our results beside published ones: the SpidR paper's long-format result tables (facebookresearch/spidr).

Usage:
    python -m eval.published --ours results/report --published <SpidR repo>/paper/results --out results/published

The SpidR repository publishes the numbers behind its tables as long-format CSVs in `paper/results/` (CC BY-NC:
not part of this repository; point at your checkout). `eval.report` writes each of our tables in the same format
(results/report/published_schema/<table>.csv, same columns and metric names, our encoder names mapped to theirs by
the config's `report.published_names`), with our intervals beside it (<table>.intervals.csv). This command joins
the two on every column but `score` and writes, for every row present in both: ours, published, the difference
(ours - published), and whether the published value lies inside our 95% interval: the bootstrap interval over
items of a single run (LM accuracies), or, for a row averaged over several seed draws, the 95% prediction interval
of one more draw, mean ± t(0.975, n-1) x std x sqrt(1 + 1/n) (the published number is one draw). Rows without an
interval (ABX, PNMI: no resampling unit) are compared at the published value's own precision (its printed
decimals, or 1e-6 relative for float32 values printed in full). Rows on one side only are listed.

OUT gets comparison.csv (matched rows), one_side.csv (rows only ours / only published), comparison.md (both, per
table), <table>.png (ours against published, one point per row, the diagonal drawn, flagged rows in red) and
comparison.json (counts, inputs, provenance). Every plot file is always written: a table without common rows
gets a figure saying so.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.config import ConfigError
from common.io import atomic_write_json, atomic_write_text, provenance

SCHEMA_DIR = "published_schema"


class PublishedError(ValueError):
    """A published-format CSV that cannot be read or compared; the message names the file (and line)."""


@dataclass(frozen=True)
class Table:
    """One published table: its file stem, key columns (all but `score`), and which of our metrics fill it.

    `metrics` maps our metric name to the key values it sets ({"metric": "swuggy_invocab"}, {"speaker": "within"});
    `quantizers` are our representation labels the table holds, each with the suffix of the published model name
    (`spidr` + `_codebooks`); `lm`: rows of an LM experiment (spoken-lm) rather than of units alone.
    """

    name: str
    keys: tuple[str, ...]
    metrics: Mapping[str, Mapping[str, str]]
    quantizers: Mapping[str, str]
    lm: bool = False
    set_column: bool = True  # a dataset column (ABX, MAP); otherwise one set feeds the table


DISCRETE = {"codebook": "_codebooks", "kmeans": "_kmeans"}
ABX = {"abx_triphone_within_speaker": {"speaker": "within"}, "abx_triphone_across_speaker": {"speaker": "across"}}
TABLES = (
    Table("spoken-lm", ("model", "num_units", "layer", "hours", "metric"),
          {"swuggy_all": {"metric": "swuggy_all"}, "swuggy_in_vocab": {"metric": "swuggy_invocab"},
           "sblimp": {"metric": "sblimp"}, "tsc": {"metric": "tsc"}, "ssc": {"metric": "ssc"}},
          DISCRETE, lm=True, set_column=False),
    Table("units-quality", ("model", "layer", "metric"),
          {"phone_purity": {"metric": "phone_purity"}, "cluster_purity": {"metric": "cluster_purity"},
           "pnmi": {"metric": "pnmi"}, "codebook_perplexity": {"metric": "codebook_perplexity"},
           "active_units": {"metric": "active_codewords"}, "bitrate": {"metric": "bitrate"}},
          DISCRETE, set_column=False),
    Table("abx-discrete", ("model", "dataset", "layer", "speaker"), ABX, DISCRETE),
    Table("abx-continuous", ("model", "dataset", "layer", "speaker"), ABX,
          {"continuous": "", "codebook_probs": "_codebooks"}),
    Table("map-continuous", ("model", "dataset", "layer"), {"word_map": {}}, {"continuous": ""}),
)
TABLE_NAMES = tuple(t.name for t in TABLES)
ALL_KEYS = tuple(dict.fromkeys(k for t in TABLES for k in t.keys))
INTERVAL_COLUMNS = ("ci_low", "ci_high", "std", "draws", "ours_set", "ours_units", "ours_experiment")


@dataclass(frozen=True)
class PublishedNames:
    """How our rows are spelled in the published tables (`report.published_names` in the workflow config).

    encoders: our encoder name -> their model-name stem, or {"default": stem, "<table>": stem} where a table spells
    it differently; an encoder not named keeps our name. datasets: our benchmark name -> their dataset column.
    spoken_lm_set / units_quality_set: the benchmark behind the tables without a dataset column (default: the
    only one, or the first in the report). lm_hours: our LM (seed-free name) -> the hours column of spoken-lm.
    codebook_size: num_units of codebook units (the SpidR / DinoSR base heads have 256).
    """

    encoders: Mapping[str, str | Mapping[str, str]] = field(default_factory=dict)
    datasets: Mapping[str, str] = field(default_factory=dict)
    spoken_lm_set: str | None = None
    units_quality_set: str | None = None
    lm_hours: Mapping[str, float] = field(default_factory=dict)
    codebook_size: int = 256

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str = "report.published_names") -> PublishedNames:
        values = dict(values or {})
        known = ("encoders", "datasets", "spoken_lm_set", "units_quality_set", "lm_hours", "codebook_size")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"'{where}': unknown key(s) {unknown}; known: {list(known)}")
        for key in ("encoders", "datasets", "lm_hours"):
            if not isinstance(values.get(key, {}), Mapping):
                raise ConfigError(f"'{where}.{key}' must be a mapping, got {values[key]!r}")
        for name, stem in (values.get("encoders") or {}).items():
            if isinstance(stem, Mapping):
                bad = sorted(set(stem) - {"default", *TABLE_NAMES})
                if bad:
                    raise ConfigError(f"'{where}.encoders.{name}': unknown table(s) {bad}; known: "
                                      f"{['default', *TABLE_NAMES]}")
            elif not isinstance(stem, str):
                raise ConfigError(f"'{where}.encoders.{name}' must be a name or a mapping by table, got {stem!r}")
        size = values.get("codebook_size", 256)
        if not isinstance(size, int) or size < 2:
            raise ConfigError(f"'{where}.codebook_size' must be an integer >= 2, got {size!r}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {"encoders": dict(self.encoders), "datasets": dict(self.datasets), "spoken_lm_set": self.spoken_lm_set,
                "units_quality_set": self.units_quality_set, "lm_hours": dict(self.lm_hours),
                "codebook_size": self.codebook_size}

    def stem(self, encoder: str, table: str) -> str:
        given = self.encoders.get(encoder, encoder)
        if isinstance(given, Mapping):
            return given.get(table, given.get("default", encoder))
        return given


# ---------------------------------------------------------------------------------------------------------------
# Our report's wide table -> the published long format (called by eval.report)


def _int_or_blank(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _table_set(wide: pd.DataFrame, table: Table, names: PublishedNames, notes: list[str]) -> str | None:
    """The one evaluation set behind a table without a dataset column."""
    chosen = names.spoken_lm_set if table.lm else names.units_quality_set
    has = [m for m in table.metrics if m in wide.columns]
    if chosen is not None:
        return chosen
    labels = wide["set"].map(str)
    sets = [s for s in dict.fromkeys(labels) if has and wide.loc[labels == s, has].notna().any().any()]
    if len(sets) > 1:
        key = "spoken_lm_set" if table.lm else "units_quality_set"
        notes.append(f"published schema {table.name}: from set {sets[0]!r} of {sets} (choose with "
                     f"report.published_names.{key})")
    return sets[0] if sets else None


def published_tables(wide: pd.DataFrame, names: PublishedNames) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Each published table's rows that our report holds: {table: frame of its keys, score and our intervals}.

    A row's model name is its encoder's stem plus its representation's suffix, so rows without a quantizer label
    (the workflow's metrics files always have one: codebook, kmeans, continuous, codebook_probs) are left out.
    """
    notes: list[str] = []
    out = {}
    for table in TABLES:
        rows: dict[tuple, dict[str, Any]] = {}
        only_set = None if table.set_column else _table_set(wide, table, names, notes)
        for rec in wide.to_dict("records"):
            quantizer = rec.get("quantizer")
            if quantizer not in table.quantizers or (table.lm and not _present(rec.get("lm"))):
                continue
            if only_set is not None and str(rec.get("set")) != only_set:
                continue
            if not table.set_column and only_set is None:
                continue
            stem = names.stem(str(rec["encoder"]), table.name)
            base = {"model": stem + table.quantizers[quantizer], "layer": _int_or_blank(rec.get("layer"))}
            if table.set_column:
                base["dataset"] = names.datasets.get(str(rec.get("set")), rec.get("set"))
            if "num_units" in table.keys:
                base["num_units"] = rec["k"] if _present(rec.get("k")) else names.codebook_size
            if table.lm:
                hours = names.lm_hours.get(str(rec["lm"]))
                base["hours"] = _int_or_blank(float(hours)) if hours is not None else ""
            for metric, fixed in table.metrics.items():
                value = rec.get(metric)
                if not _present(value):
                    continue
                row = {**base, **fixed}
                key = tuple(str(row[k]) for k in table.keys)
                entry = {**{k: row[k] for k in table.keys}, "score": value,
                         **{c: rec.get(f"{metric}__{c}") for c in ("ci_low", "ci_high", "std", "draws")},
                         "ours_set": rec.get("set"), "ours_units": rec.get("units"),
                         "ours_experiment": rec.get("experiment")}
                old = rows.get(key)
                if old is not None and old["score"] != value:
                    notes.append(f"published schema {table.name}: two of our rows map to "
                                 f"{dict(zip(table.keys, key, strict=True))} ({old['ours_units']} {old['score']} and "
                                 f"{rec.get('units')} {value}); kept the first: map one encoder to another name "
                                 "in report.published_names.encoders")
                    continue
                rows.setdefault(key, entry)
        frame = pd.DataFrame(list(rows.values()), columns=[*table.keys, "score", *INTERVAL_COLUMNS])
        out[table.name] = frame
    return out, notes


def write_schema(tables: Mapping[str, pd.DataFrame], folder: Path) -> None:
    """<table>.csv in exactly the published columns, <table>.intervals.csv with our intervals beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        frame = tables[table.name]
        atomic_write_text(folder / f"{table.name}.csv", frame[[*table.keys, "score"]].to_csv(index=False))
        atomic_write_text(folder / f"{table.name}.intervals.csv", frame.to_csv(index=False))


# ---------------------------------------------------------------------------------------------------------------
# The comparison


def _norm(value: Any) -> str:
    """A key cell as text that compares equal across the two files: '6.0' and '6' are one layer."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number.is_integer() else text


def read_table(path: Path, table: Table) -> pd.DataFrame:
    """A long-format CSV of `table`: key columns as normalised text, `score` as float; errors name the file."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise PublishedError(f"{path}: not a readable CSV ({err})") from err
    missing = [c for c in (*table.keys, "score") if c not in frame.columns]
    if missing:
        raise PublishedError(f"{path}: columns {missing} missing; the {table.name} table has columns "
                         f"{[*table.keys, 'score']} (the SpidR repository's paper/results layout)")
    for column in table.keys:
        frame[column] = frame[column].map(_norm)
    scores = pd.to_numeric(frame["score"], errors="coerce")
    bad = frame.index[scores.isna() & (frame["score"].str.strip() != "")]
    if len(bad):
        raise PublishedError(f"{path}:{bad[0] + 2}: score {frame['score'][bad[0]]!r} is not a number")
    frame["published_text"] = frame["score"]
    frame["score"] = scores
    dup = frame.duplicated(list(table.keys), keep=False)
    if dup.any():
        first = frame[dup].iloc[0]
        raise PublishedError(f"{path}: the row {dict((k, first[k]) for k in table.keys)} appears more than once")
    return frame


def precision(text: str, value: float) -> float:
    """Half a unit of the last printed decimal of a published number (or 1e-6 relative, float32 printed in full)."""
    text = text.strip().lower()
    if "e" in text or "." not in text:
        return max(0.5 if "e" not in text else 0.0, 1e-6 * abs(value))
    return max(0.5 * 10.0 ** -len(text.split(".", 1)[1]), 1e-6 * abs(value))


def seed_interval(mean: float, std: float, draws: int) -> tuple[float, float]:
    """95% prediction interval of one more seed draw, from the mean and std of `draws` draws."""
    from scipy import stats

    half = stats.t.ppf(0.975, draws - 1) * std * math.sqrt(1 + 1 / draws)
    return mean - half, mean + half


def _num(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def compare_table(ours: pd.DataFrame, published: pd.DataFrame, table: Table) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows in both with the verdict, rows on one side only) of one table."""
    keys = list(table.keys)
    merged = ours.merge(published[[*keys, "score", "published_text"]], on=keys, how="outer",
                        suffixes=("_ours", "_published"), indicator=True)
    rows, one_side = [], []
    for rec in merged.to_dict("records"):
        key = {k: rec[k] for k in keys}
        if rec["_merge"] != "both":
            side = "ours" if rec["_merge"] == "left_only" else "published"
            one_side.append({"table": table.name, "side": side, **key,
                             "score": rec["score_ours"] if side == "ours" else rec["score_published"]})
            continue
        value, pub = _num(rec["score_ours"]), _num(rec["score_published"])
        row = {"table": table.name, **key, "ours": value, "published": pub,
               "difference": value - pub if value is not None and pub is not None else None}
        low, high = _num(rec.get("ci_low")), _num(rec.get("ci_high"))
        std, draws = _num(rec.get("std")), _num(rec.get("draws"))
        row.update(ci_low=low, ci_high=high, draws=int(draws) if draws else 1, std=std, seeds_low=None,
                   seeds_high=None, inside_ci=None, inside_seeds=None, within_precision=None)
        if value is not None and pub is not None:
            row["within_precision"] = abs(value - pub) <= precision(str(rec["published_text"]), pub)
            if draws is not None and draws > 1 and std is not None:
                row["seeds_low"], row["seeds_high"] = seed_interval(value, std, int(draws))
                row["inside_seeds"] = row["seeds_low"] <= pub <= row["seeds_high"]
            if low is not None and high is not None:
                row["inside_ci"] = low <= pub <= high
        row["verdict"] = verdict(row)
        row.update(ours_set=rec.get("ours_set"), ours_units=rec.get("ours_units"),
                   ours_experiment=rec.get("ours_experiment"))
        rows.append(row)
    one_side.sort(key=lambda r: r["side"] != "ours")  # ours first, each side in key order (stable)
    return pd.DataFrame(rows), pd.DataFrame(one_side)


def verdict(row: Mapping[str, Any]) -> str:
    """One word on a matched row: the seed interval first, then the bootstrap CI, then the published precision."""
    if row["ours"] is None or row["published"] is None:
        return "no value"
    if row["inside_seeds"] is not None:
        return "inside seed interval" if row["inside_seeds"] else "OUTSIDE seed interval"
    if row["inside_ci"] is not None:
        return "inside 95% CI" if row["inside_ci"] else "OUTSIDE 95% CI"
    return "equal to published precision" if row["within_precision"] else "differs (no interval)"


def flagged(verdicts: pd.Series) -> pd.Series:
    return verdicts.str.startswith("OUTSIDE")


def ours_folder(path: Path) -> Path:
    """The folder with our published-schema CSVs: REPORT_DIR/published_schema, or that folder itself."""
    for folder in (path / SCHEMA_DIR, path):
        if any((folder / f"{t}.csv").is_file() for t in TABLE_NAMES):
            return folder
    raise FileNotFoundError(f"{path}: no {SCHEMA_DIR}/<table>.csv ({', '.join(TABLE_NAMES)}); build the report "
                            "first (python -m eval.report --metrics ... --out REPORT_DIR)")


def read_ours(folder: Path, table: Table) -> pd.DataFrame | None:
    path = folder / f"{table.name}.csv"
    if not path.is_file():
        return None
    frame = read_table(path, table).drop(columns="published_text")
    intervals = folder / f"{table.name}.intervals.csv"
    if intervals.is_file():
        extra = read_table(intervals, table).drop(columns=["score", "published_text"])
        frame = frame.merge(extra, on=list(table.keys), how="left")
    return frame


def compare(ours_dir: Path, published_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Every table present on both sides: (matched rows, one-sided rows, notes on tables present on one side)."""
    if not published_dir.is_dir():
        raise FileNotFoundError(f"{published_dir}: published results folder not found (a checkout's "
                                "facebookresearch/spidr paper/results)")
    folder = ours_folder(ours_dir)
    present = [t for t in TABLES if (published_dir / f"{t.name}.csv").is_file()]
    if not present:
        raise PublishedError(f"{published_dir}: none of {[f'{t}.csv' for t in TABLE_NAMES]}; point --published at the "
                         "SpidR repository's paper/results folder")
    matched, one_side, notes = [], [], []
    for table in TABLES:
        ours = read_ours(folder, table)
        if table not in present:
            notes.append(f"{table.name}: no {table.name}.csv in {published_dir}")
            continue
        published = read_table(published_dir / f"{table.name}.csv", table)
        if ours is None:
            notes.append(f"{table.name}: not in our report ({folder})")
            ours = pd.DataFrame(columns=[*table.keys, "score"])
        both, one = compare_table(ours, published, table)
        matched.append(both)
        one_side.append(one)
    columns = ["table", *ALL_KEYS, "ours", "published", "difference", "ci_low", "ci_high", "inside_ci", "draws",
               "std", "seeds_low", "seeds_high", "inside_seeds", "within_precision", "verdict", "ours_set",
               "ours_units", "ours_experiment"]
    both = pd.concat([m for m in matched if len(m)], ignore_index=True) if any(len(m) for m in matched) else None
    both = pd.DataFrame(columns=columns) if both is None else both.reindex(columns=columns)
    one = pd.concat([o for o in one_side if len(o)], ignore_index=True) if any(len(o) for o in one_side) else None
    one = pd.DataFrame(columns=["table", "side", *ALL_KEYS, "score"]) if one is None else \
        one.reindex(columns=["table", "side", *ALL_KEYS, "score"])
    return both, one, notes


# ---------------------------------------------------------------------------------------------------------------
# Output


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def _num_text(value: Any, sign: str = "") -> str:
    """Six significant digits: enough to see a 1e-5 difference on a 0.6 PNMI and on a 190 perplexity."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{sign}.6g}"


def markdown(both: pd.DataFrame, one: pd.DataFrame, notes: list[str]) -> str:
    from eval.report import markdown_table

    lines = ["## Ours beside the published results", "",
             "Interval: the 95% bootstrap CI over items of one run, or over several seed draws the 95% prediction "
             "interval of one more draw; rows without one are compared at the published value's precision.", ""]
    for table in TABLES:
        rows = both[both["table"] == table.name]
        only = one[one["table"] == table.name]
        if not len(rows) and not len(only):
            continue
        n_flag = int(flagged(rows["verdict"]).sum())
        ours_only, pub_only = int((only["side"] == "ours").sum()), int((only["side"] == "published").sum())
        lines += [f"### {table.name}", "", f"{len(rows)} row(s) in both ({n_flag} flagged: published outside our "
                  f"interval), {ours_only} only ours, {pub_only} only published.", ""]
        if len(rows):
            header = [*table.keys, "ours", "published", "ours - published", "interval", "verdict"]
            body = []
            for r in rows.to_dict("records"):
                low, high = (r["seeds_low"], r["seeds_high"]) if _fmt(r["seeds_low"]) != "–" else \
                    (r["ci_low"], r["ci_high"])
                interval = f"[{_fmt(low)}, {_fmt(high)}]" if _fmt(low) != "–" else "–"
                verdict_text = f"**{r['verdict']}**" if str(r["verdict"]).startswith("OUTSIDE") else r["verdict"]
                body.append([_fmt(r[k]) for k in table.keys]
                            + [_num_text(r["ours"]), _num_text(r["published"]), _num_text(r["difference"], "+"),
                               interval, verdict_text])
            lines += [markdown_table(header, body)]
        for side, title in (("ours", "Only ours"), ("published", "Only published")):
            part = only[only["side"] == side]
            if side == "published" and not len(rows) and not ours_only and len(part):
                lines += [f"Our report has no row of this table; its {len(part)} published row(s) are in "
                          "one_side.csv.", ""]
                continue
            if len(part):
                lines += [f"{title} ({len(part)}):", "",
                          markdown_table([*table.keys, "score"],
                                         [[_fmt(r[k]) for k in table.keys] + [_num_text(r["score"])]
                                          for r in part.to_dict("records")])]
    lines += [f"Note: {n}  " for n in notes]
    return "\n".join(lines).rstrip() + "\n"


def plot_table(rows: pd.DataFrame, table: Table, out: Path) -> str | None:
    """Ours (y) against published (x), one point per row, a panel per metric (or speaker), diagonal drawn."""
    from eval.report import note_figure, save_figure

    rows = rows.dropna(subset=["ours", "published"])
    if not len(rows):
        note = f"{table.name}: no row in both ours and the published table"
        note_figure(out, note)
        return note
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    facet = "metric" if "metric" in table.keys else None
    groups = list(rows.groupby(facet, sort=True)) if facet else [(table.name, rows)]
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 3.6 * nrows), squeeze=False)
    for ax, (title, group) in zip(axes.flat, groups, strict=False):
        x, y = group["published"].astype(float), group["ours"].astype(float)
        low = group["seeds_low"].where(group["seeds_low"].notna(), group["ci_low"]).astype(float)
        high = group["seeds_high"].where(group["seeds_high"].notna(), group["ci_high"]).astype(float)
        bad = flagged(group["verdict"]).to_numpy()
        yerr = np.vstack([(y - low).clip(lower=0).fillna(0), (high - y).clip(lower=0).fillna(0)])
        ax.errorbar(x[~bad], y[~bad], yerr=yerr[:, ~bad], fmt="o", ms=4, color="C0", ecolor="C0", alpha=0.8,
                    label="inside / no interval")
        if bad.any():
            ax.errorbar(x[bad], y[bad], yerr=yerr[:, bad], fmt="o", ms=5, color="C3", ecolor="C3",
                        label="published outside our interval")
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi) * 0.05, 1e-3)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", lw=1, ls="--", label="ours = published")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{title} ({len(group)} rows)", fontsize=9)
        ax.set_xlabel("published", fontsize=8)
        ax.set_ylabel("ours", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{table.name}: ours against published", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out, dpi=110)
    plt.close(fig)
    return None


def run(ours_dir: Path, published_dir: Path, out: Path) -> dict[str, Any]:
    both, one, notes = compare(ours_dir, published_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "comparison.csv", both.to_csv(index=False))
    atomic_write_text(out / "one_side.csv", one.to_csv(index=False))
    for table in TABLES:
        note = plot_table(both[both["table"] == table.name], table, out / f"{table.name}.png")
        if note:
            notes.append(note)
    atomic_write_text(out / "comparison.md", markdown(both, one, notes))
    counts = {}
    for table in TABLES:
        rows, only = both[both["table"] == table.name], one[one["table"] == table.name]
        counts[table.name] = {"both": len(rows), "flagged": int(flagged(rows["verdict"]).sum()),
                              "equal_to_published_precision": int(rows["within_precision"].fillna(False).astype(bool)
                                                                  .sum()),
                              "only_ours": int((only["side"] == "ours").sum()),
                              "only_published": int((only["side"] == "published").sum())}
    summary = {"ours": str(ours_dir), "published": str(published_dir), "tables": counts, "notes": notes,
               **provenance(None)}
    atomic_write_json(out / "comparison.json", summary)
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ours", type=Path, required=True, help="our report folder (eval.report --out)")
    parser.add_argument("--published", type=Path, required=True,
                        help="folder of published long-format CSVs (facebookresearch/spidr paper/results)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    summary = run(args.ours, args.published, args.out)
    for name, c in summary["tables"].items():
        if c["both"] or c["only_ours"]:
            print(f"{name}: {c['both']} row(s) in both, {c['flagged']} flagged (published outside our interval), "
                  f"{c['equal_to_published_precision']} equal to the published precision; {c['only_ours']} only "
                  f"ours, {c['only_published']} only published")
    print(f"comparison -> {args.out}/comparison.md")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
