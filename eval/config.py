"""Evaluation settings, checked without torch: ABX and unit-quality knobs, the workflow's `eval` block, and the
`--config` JSON of every eval entry point, whose `experiment` (or `units`) block is where the metric labels come from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from common.config import ConfigError, field
from units.config import UnitsConfig

Distance = Literal["angular", "cosine", "euclidean", "kl_symmetric", "identical"]


@dataclass(frozen=True)
class AbxConfig:
    """ABX hyperparameters (config.yaml's `eval.abx`); defaults reproduce the SpidR paper's protocol."""

    slicing: Literal["fastabx", "librilight"] = "fastabx"  # see eval.abx.SLICINGS
    max_size_group: int | None = field(10, ge=1)  # ZeroSpeech subsampling; null disables it
    max_x_across: int | None = field(5, ge=1)
    seed: int = 0
    distance: Distance | None = None  # default: "angular" on features, "identical" on units
    item_kind: Literal["triphone", "phoneme"] | None = None  # default from the item file name
    speakers: tuple[Literal["within", "across"], ...] = ("within", "across")
    device: str | None = None  # where fastabx keeps the tokens; default CUDA if available
    # Largest share of items allowed to fall past the end of their utterance's frames (dropped, and footnoted in
    # the report); more means units or features cut short, or the wrong frame rate: an error naming the files.
    max_dropped: float = field(0.02, ge=0, le=1)

    def __post_init__(self) -> None:
        if not self.speakers or len(set(self.speakers)) != len(self.speakers):
            raise ConfigError(f"'speakers' must be a non-empty subset of ['within', 'across'], got "
                              f"{list(self.speakers)}")


@dataclass(frozen=True)
class UnitQualityConfig:
    """Alignment knobs of PNMI and purities; the defaults are the published protocol."""

    label_rate: float = field(100.0, gt=0)  # Hz of the phone labels
    max_length_diff: int = field(2, ge=0)  # frames, after repetition (SpidR raises above 2)
    # For units files that do not record them (JSON lines, text units); a Parquet units file's own values win, and
    # a contradicting value is an error. Defaults: 50 Hz (every encoder here, SpidR's releases), max unit id + 1.
    unit_rate: float | None = field(None, gt=0)
    vocab_size: int | None = field(None, ge=2)


@dataclass(frozen=True)
class EvalConfig:
    """The workflow's `eval` block: which benchmarks, the LM scoring convention and the ABX protocol."""

    # `benchmarks` entries, all evaluated in one run; the report gives each its Set column value. The first is also
    # the set of the pretraining's learning curves.
    benchmarks: tuple[str, ...] = ("demo",)
    normalisation: Literal["mean", "sum"] = "mean"  # LM log-likelihood per token (mean) or total
    abx_features: bool = True  # also ABX on the continuous features of each evaluated layer
    abx: AbxConfig = dataclasses.field(default_factory=AbxConfig)
    unit_quality: UnitQualityConfig = dataclasses.field(default_factory=UnitQualityConfig)

    def __post_init__(self) -> None:
        if not self.benchmarks:
            raise ConfigError("'benchmarks' must name at least one benchmark")
        repeated = sorted({b for b in self.benchmarks if self.benchmarks.count(b) > 1})
        if repeated:
            raise ConfigError(f"'benchmarks' names {repeated} more than once")


@dataclass(frozen=True)
class Experiment:
    """What is evaluated: units (or continuous features: quantizer null) and, for LM tasks, the experiment's LM."""

    units: UnitsConfig
    name: str | None = None  # the workflow's experiment name (LM tasks)
    lm: str | None = None
    eval_set: str | None = None  # the evaluation set (benchmark name): the report's Set column
    # Seed draws of one grid row (pipeline.grids.draw_labels): the seeds, and the seed-free names of the row.
    seed: int | None = None  # LM training seed
    kmeans_seed: int | None = None
    lm_group: str | None = None
    units_group: str | None = None

    def labels(self) -> dict[str, Any]:
        """The labels of every metric (eval.results.LABEL_KEYS), which the report groups rows by."""
        labels = {"experiment": self.name, "lm": self.lm_group or self.lm, **self.units.labels(), "set": self.eval_set,
                  "seed": self.seed, "kmeans_seed": self.kmeans_seed}
        if self.units_group is not None:
            labels["units"] = self.units_group
        return labels


def labels_of(experiment: Experiment | None) -> dict[str, Any]:
    return experiment.labels() if experiment is not None else {}


@dataclass(frozen=True)
class AbxJob:
    """`python -m eval.abx --config`: the protocol and what is evaluated."""

    abx: AbxConfig = dataclasses.field(default_factory=AbxConfig)
    experiment: Experiment | None = None


@dataclass(frozen=True)
class UnitQualityJob:
    """`python -m eval.unit_quality --config`."""

    unit_quality: UnitQualityConfig = dataclasses.field(default_factory=UnitQualityConfig)
    experiment: Experiment | None = None


@dataclass(frozen=True)
class ScoresJob:
    """`python -m eval.slm21 / eval.storycloze --config`: LM scores turned into accuracies."""

    normalisation: Literal["mean", "sum"] | None = None  # None: read from the scores' sidecar (lm.score writes it)
    experiment: Experiment | None = None
