"""Pretraining learning curves: codebook diagnostics on a dev set during training, and their plot.

Usage:
    python -m eval.curves train --dev-manifest DEV.tsv --phones DEV_PHONES.jsonl [--max-utterances 200]
        SPIDR.TRAIN ARGS...        (spidr.train with a probe; its config sets `curve_interval`)
    python -m eval.curves plot --metrics NAME=WORKDIR/metrics.jsonl ... --out results/report

`train` runs spidr.train (same flags, also under torchrun) with a probe that, every `curve_interval` steps, labels
the dev set with the teacher's nearest codewords and the student heads' argmax (eval.diagnose, on clean input, no
codebook update) and records per codebook layer their perplexity, active codewords and PNMI with the dev phones
in the run's metrics.jsonl (`"split": "curves"`). The probe is here, not in spidr/, because PNMI is eval's.

`plot` draws, per encoder, the training loss and, per codebook layer, perplexity, active codewords and PNMI
against the step (dev-set curves where the run has them, the training batches' target statistics otherwise),
into OUT/learning_curves.png, with the points in OUT/learning_curves.csv.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from common.io import atomic_write_text
from data.audio import load_audio
from data.manifest import read_manifest
from eval.benchmarks import read_phone_labels
from eval.diagnose import diagnose
from eval.report import save_figure
from spidr.model import DinoSR

# What a curves record holds per codebook layer (lists in codebook-layer order, as the training records).
CURVE_KEYS = ("teacher_ppl", "teacher_active", "teacher_pnmi", "head_ppl", "head_active", "head_pnmi",
              "target_rank")


class CodebookProbe:
    """Codebook diagnostics of a model on the first `max_utterances` of a dev manifest with 100 Hz phone labels."""

    def __init__(self, manifest: str | Path, phones: str | Path, max_utterances: int = 200) -> None:
        rows = read_manifest(manifest).head(max_utterances)
        self.ids = list(rows["id"])
        self.wavs = [torch.from_numpy(load_audio(path)) for path in rows["path"]]
        self.phones = read_phone_labels(Path(phones))
        missing = [uid for uid in self.ids if uid not in self.phones]
        if missing:
            raise ValueError(f"{phones}: no phone labels for {len(missing)} of the {len(self.ids)} dev utterances "
                             f"of {manifest} (e.g. {missing[0]!r})")

    def __call__(self, model: DinoSR) -> dict:
        report = diagnose(model, self.wavs, self.ids, self.phones)
        layers = sorted(report)
        teacher = [report[lay]["teacher_assignments"] for lay in layers]
        heads = [report[lay]["head_argmax"] for lay in layers]
        return {
            "codebook_layers": layers, "utterances": len(self.ids),
            "teacher_ppl": [round(t["perplexity"], 3) for t in teacher],
            "teacher_active": [t["active"] for t in teacher],
            "teacher_pnmi": [round(t["pnmi"], 5) for t in teacher],
            "head_ppl": [round(h["perplexity"], 3) for h in heads],
            "head_active": [h["active"] for h in heads],
            "head_pnmi": [round(h["pnmi"], 5) for h in heads],
            "target_rank": [round(report[lay]["target_effective_rank"], 3) for lay in layers],
        }


# ---------------------------------------------------------------------------------------------------------------
# The points and the plot


def read_records(path: str | Path) -> list[dict]:
    """The JSON records of a metrics.jsonl, with the file and line of a bad one in the error."""
    records = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON record ({err})") from None
    return records


def curve_points(name: str, records: list[dict]) -> pd.DataFrame:
    """Long table (encoder, source, step, layer, metric, value): dev-set curves and the training records."""
    rows = []
    for r in records:
        split, step = r.get("split"), r.get("step")
        if split == "curves":
            for key in CURVE_KEYS:
                for lay, value in zip(r["codebook_layers"], r[key], strict=True):
                    rows.append((name, "dev", step, lay, key, value))
        elif split == "train":
            rows.append((name, "train", step, 0, "loss", r["loss"]))
            for key, metric in (("target_ppl", "teacher_ppl"), ("pred_ppl", "head_ppl"),
                                ("active_codewords", "teacher_active")):
                for lay, value in zip(r["codebook_layers"], r[key], strict=True):
                    rows.append((name, "train", step, lay, metric, value))
    return pd.DataFrame(rows, columns=["encoder", "source", "step", "layer", "metric", "value"])


PANELS = (("perplexity", ("teacher_ppl", "head_ppl")), ("active codewords", ("teacher_active", "head_active")),
          ("PNMI", ("teacher_pnmi", "head_pnmi")))


def plot_curves(points: pd.DataFrame, path: str | Path) -> None:
    """One row per encoder: training loss, then per-layer perplexity, active codewords and PNMI (teacher solid,
    heads dashed), from the dev-set probe when the run has one, else from the training batches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    encoders = list(dict.fromkeys(points["encoder"]))
    fig, axes = plt.subplots(len(encoders), 1 + len(PANELS), figsize=(4.2 * (1 + len(PANELS)), 3.2 * len(encoders)),
                             squeeze=False)
    for row, name in zip(axes, encoders, strict=True):
        mine = points[points["encoder"] == name]
        loss = mine[mine["metric"] == "loss"]
        row[0].plot(loss["step"], loss["value"], color="black")
        row[0].set(title=f"{name}: training loss", xlabel="step")
        source = "dev" if (mine["source"] == "dev").any() else "train"
        layers = sorted(set(mine.loc[mine["layer"] > 0, "layer"]))
        colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(layers), 1)))
        for ax, (title, (teacher, head)) in zip(row[1:], PANELS, strict=True):
            for colour, lay in zip(colours, layers, strict=False):
                for metric, style in ((teacher, "-"), (head, "--")):
                    sel = mine[(mine["source"] == source) & (mine["metric"] == metric) & (mine["layer"] == lay)]
                    if len(sel):
                        ax.plot(sel["step"], sel["value"], style, color=colour,
                                label=f"L{lay}" if metric == teacher else None)
            ax.set(title=f"{title} ({'dev set' if source == 'dev' else 'training batches'})", xlabel="step")
            if not ax.lines:
                ax.text(0.5, 0.5, "no dev-set probe\n(train.curve_interval)", ha="center", va="center",
                        transform=ax.transAxes)
        if layers:
            row[1].legend(fontsize=7, ncol=2, title="teacher —, heads --", title_fontsize=7)
    fig.tight_layout()
    save_figure(fig, Path(path), dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Entry points


def train_main(argv: list[str]) -> None:
    """spidr.train with the dev-set probe; every flag this parser does not know goes to spidr.train."""
    parser = argparse.ArgumentParser(prog="python -m eval.curves train", allow_abbrev=False)
    parser.add_argument("--dev-manifest", required=True, help="dev manifest (TSV) whose utterances are probed")
    parser.add_argument("--phones", required=True, help="their 100 Hz phone labels (JSONL), for PNMI")
    parser.add_argument("--max-utterances", type=int, default=200)
    args, rest = parser.parse_known_args(argv)
    from spidr.train import main as spidr_train_main

    entry = shlex.join(["eval.curves", "train", "--dev-manifest", args.dev_manifest, "--phones", args.phones])
    spidr_train_main(rest, probe=CodebookProbe(args.dev_manifest, args.phones, args.max_utterances), entry=entry)


def plot_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.curves plot")
    parser.add_argument("--metrics", nargs="+", required=True, metavar="NAME=METRICS.jsonl",
                        help="a pretraining run's metrics log, labelled with its encoder name")
    parser.add_argument("--out", required=True, type=Path, help="folder for learning_curves.png and .csv")
    args = parser.parse_args(argv)
    tables = []
    for item in args.metrics:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--metrics {item!r}: expected NAME=PATH")
        tables.append(curve_points(name, read_records(path)))
    points = pd.concat(tables, ignore_index=True)
    if points.empty:
        raise ValueError(f"no training or curve records in {' '.join(args.metrics)}")
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "learning_curves.csv", points.to_csv(index=False))
    plot_curves(points, args.out / "learning_curves.png")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"train": train_main, "plot": plot_main}
    if not argv or argv[0] not in commands:
        sys.exit(f"usage: python -m eval.curves {{train,plot}} ...\n{__doc__}")
    commands[argv[0]](argv[1:])


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
