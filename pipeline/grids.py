"""Experiment grids: a `grids` entry of the workflow config expands into ordinary units, LMs and experiments.

    grids:
      spidr_kmeans:            # -> units and experiments spidr_kmeans_l4, spidr_kmeans_l6
        encoder: spidr_small
        layer: [4, 6]
        quantizer: kmeans
        k: 256
        fit: {corpus: demo, max_frames: 100000}
        lm: tiny
        seed: [0, 1, 2]        # LM seeds: LMs tiny_s0, tiny_s1, tiny_s2 (train.seed set), one row, mean ± std
        kmeans_seed: [0, 1]    # k-means fit seeds: units ..._ks0, ..._ks1

Every dimension (encoder, layer, quantizer, k, kmeans_seed, lm, lm_corpus, seed) takes one value or a list; the
product is expanded. Names are the grid's name plus one readable part per dimension with more than one value,
in this order: `_<encoder>`, `_l<layer>`, `_<quantizer>`, `_k<K>`, `_ks<kmeans seed>` (units and experiments),
`_<lm>`, `_<lm corpus>`, `_s<seed>` (experiments; LMs are `<lm>[_<corpus>][_s<seed>]`). An expanded entry is an
ordinary entry (same `--config` JSON, same rerun scoping as if written by hand); one that has the name of an
existing entry must be identical to it, so a grid can take over hand-written experiments without renaming them.

`abx_codebook_probs: true` is passed to the grid's codebook units entries (ABX on codebook-head probabilities).

A grid can also run LMs over units entries that exist already (hand-written or from another grid) instead of
making new ones: `units` takes their names, and only the LM dimensions (lm, lm_corpus, seed) may go with it,
e.g. the data-scaling LMs of a paper on corpora of 600 h and 60k h:

    grids:
      scaling:                 # -> experiments scaling_spidr_kmeans_l6_ll600, ..._ll60k, scaling_hubert_l11_...
        units: [spidr_kmeans_l6, hubert_l11]
        lm: opt125m
        lm_corpus: [ll600, ll60k]

Its experiments are named `<grid>_<units>` (the units part only with several units) plus the LM parts.

Seeds are labels too: `draw_labels` gives each expanded experiment and units entry its seed labels and the
seed-free names of its row, so the report shows the draws of one configuration as one row with mean ± std.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from common.config import ConfigError

DIMENSIONS = ("encoder", "layer", "quantizer", "k", "kmeans_seed", "lm", "lm_corpus", "seed")
UNIT_PARTS = {"encoder": "_{}", "layer": "_l{}", "quantizer": "_{}", "k": "_k{}", "kmeans_seed": "_ks{}"}
LM_PARTS = {"lm": "_{}", "lm_corpus": "_{}", "seed": "_s{}"}
KEYS = (*DIMENSIONS, "fit", "abx_codebook_probs")
# The form over existing units entries: `units` plus the LM dimensions.
UNITS_DIMENSIONS = ("units", "lm", "lm_corpus", "seed")
UNITS_FORM_PARTS = {"units": "_{}"}


def _values(grid: str, entry: dict[str, Any], key: str) -> list[Any]:
    value = entry.get(key)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"'grids.{grid}.{key}' is an empty list: give at least one value")
    if len(set(map(repr, values))) != len(values):
        raise ConfigError(f"'grids.{grid}.{key}' repeats a value: {values}")
    return values


def _points(grid: str, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every point of the grid as {dimension: value}, plus which dimensions vary (those get a name part)."""
    dimensions = UNITS_DIMENSIONS if "units" in entry else DIMENSIONS
    known = UNITS_DIMENSIONS if "units" in entry else KEYS
    unknown = sorted(set(entry) - set(known))
    if unknown:
        if "units" in entry:
            raise ConfigError(f"'grids.{grid}': {unknown} cannot go with 'units' (a grid over existing units "
                              f"entries takes only {list(UNITS_DIMENSIONS)})")
        raise ConfigError(f"'grids.{grid}': unknown key(s) {unknown}; known: {list(KEYS)} or {list(UNITS_DIMENSIONS)}")
    required = ("units",) if "units" in entry else ("encoder", "layer", "quantizer")
    for key in required:
        if entry.get(key) is None:
            raise ConfigError(f"'grids.{grid}.{key}' is required")
    if "abx_codebook_probs" in entry and not isinstance(entry["abx_codebook_probs"], bool):
        raise ConfigError(f"'grids.{grid}.abx_codebook_probs' must be true or false, got "
                          f"{entry['abx_codebook_probs']!r}")
    axes = {key: _values(grid, entry, key) for key in dimensions}
    varying = {key for key, values in axes.items() if len(values) > 1}
    return [dict(zip(dimensions, combo, strict=True), _varying=varying)
            for combo in itertools.product(*(axes[k] for k in dimensions))]


def _name(base: str, point: dict[str, Any], parts: dict[str, str]) -> str:
    return base + "".join(fmt.format(point[k]) for k, fmt in parts.items()
                          if k in point["_varying"] and point[k] is not None)


def _lm_name(point: dict[str, Any]) -> str:
    """LM entries are shared across grids: the base LM plus its corpus and seed when those are set."""
    name = point["lm"]
    if point["lm_corpus"] is not None:
        name += f"_{point['lm_corpus']}"
    if point["seed"] is not None:
        name += f"_s{point['seed']}"
    return name


def _put(section: dict[str, Any], name: str, entry: dict[str, Any], where: str) -> None:
    old = section.get(name)
    if old is not None and old != entry:
        raise ConfigError(f"{where} expands to {name!r}, which is already defined differently ({old} vs {entry}); "
                          "rename one of them")
    section[name] = entry


def _lm(config: dict[str, Any], grid: str, point: dict[str, Any]) -> tuple[str | None, dict | None, str | None]:
    """(LM name, LM entry, seed-free LM name) of a grid point; all None without an LM."""
    if point["lm"] is None:
        return None, None, None
    base = (config.get("lms") or {}).get(point["lm"])
    if base is None:
        raise ConfigError(f"'grids.{grid}.lm' refers to LM {point['lm']!r}, which is not defined "
                          f"({sorted(config.get('lms') or {})})")
    lm, lm_entry = _lm_name(point), copy.deepcopy(base)
    if point["lm_corpus"] is not None:
        lm_entry["corpus"] = point["lm_corpus"]
    if point["seed"] is not None:
        lm_entry["train"] = {**lm_entry.get("train", {}), "seed": point["seed"]}
    return lm, lm_entry, _lm_name({**point, "seed": None})


def _expand_units_form(config: dict[str, Any], grid: str, entry: dict[str, Any],
                       units: dict[str, Any]) -> list[dict[str, Any]]:
    """A grid over existing units entries (`units`): LMs only, the units entries unchanged."""
    out = []
    for point in _points(grid, entry):
        name = point["units"]
        if name not in units:
            raise ConfigError(f"'grids.{grid}.units' refers to units {name!r}, which is not defined (by hand or by "
                              f"another grid): {sorted(units)}")
        lm, lm_entry, lm_group = _lm(config, grid, point)
        out.append({"grid": grid, "units": name, "units_entry": units[name], "lm": lm, "lm_entry": lm_entry,
                    "experiment": _name(_name(grid, point, UNITS_FORM_PARTS), point, LM_PARTS),
                    "units_group": name, "lm_group": lm_group, "seed": point["seed"], "kmeans_seed": None,
                    "units_form": True})
    return out


def expand(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries each grid adds: [{"grid", "units", "units_entry", "lm", "lm_entry", "experiment", labels}]."""
    out = []
    grids = config.get("grids") or {}
    for grid, entry in grids.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"'grids.{grid}' must be a mapping of dimensions, got {entry!r}")
        if "units" in entry:
            continue  # after every grid that makes units entries, which it may name
        for point in _points(grid, entry):
            kmeans = point["quantizer"] == "kmeans"
            if kmeans and (point["k"] is None or entry.get("fit") is None):
                raise ConfigError(f"'grids.{grid}': quantizer kmeans needs 'k' and 'fit'")
            units_entry = {"encoder": point["encoder"], "layer": point["layer"], "quantizer": point["quantizer"]}
            if kmeans:
                fit = dict(entry["fit"])
                if point["kmeans_seed"] is not None:
                    fit["seed"] = point["kmeans_seed"]
                units_entry.update(k=point["k"], fit=fit)
            elif entry.get("abx_codebook_probs"):  # a codebook-head property: k-means points of the grid lack it
                units_entry["abx_codebook_probs"] = True
            # Codebook units have no K and no k-means seed: those dimensions neither name nor multiply them.
            unit_point = point if kmeans else {**point, "k": None, "kmeans_seed": None}
            units = _name(grid, unit_point, UNIT_PARTS)
            units_group = _name(grid, {**unit_point, "kmeans_seed": None}, UNIT_PARTS)
            lm, lm_entry, lm_group = _lm(config, grid, point)
            experiment = _name(_name(grid, unit_point, UNIT_PARTS), point, LM_PARTS)
            out.append({"grid": grid, "units": units, "units_entry": units_entry, "lm": lm, "lm_entry": lm_entry,
                        "experiment": experiment, "units_group": units_group, "lm_group": lm_group,
                        "seed": point["seed"], "kmeans_seed": point["kmeans_seed"] if kmeans else None})
    units = {**(config.get("units") or {}), **{p["units"]: p["units_entry"] for p in out}}
    for grid, entry in grids.items():
        if "units" in entry:
            out += _expand_units_form(config, grid, entry, units)
    return out


def expand_grids(config: dict[str, Any]) -> dict[str, Any]:
    """The config with every grid expanded into `units`, `lms` and `experiments` (idempotent; `grids` is kept)."""
    config = copy.deepcopy(config)
    for section in ("units", "lms", "experiments"):
        config[section] = dict(config.get(section) or {})
    for point in expand(config):
        where = f"'grids.{point['grid']}'"
        _put(config["units"], point["units"], point["units_entry"], where)
        if point["lm"] is not None:  # without a corpus or seed dimension, the LM itself (identical: no change)
            _put(config["lms"], point["lm"], point["lm_entry"], where)
        experiment = {"units": point["units"], "lm": point["lm"]}
        old = config["experiments"].get(point["experiment"])
        if old is not None and {"lm": None, **old} != experiment:
            raise ConfigError(f"{where} expands to experiment {point['experiment']!r}, which is already defined "
                              f"differently ({old} vs {experiment}); rename one of them")
        config["experiments"].setdefault(point["experiment"], experiment)
    return config


def draw_labels(config: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Seed labels and seed-free row names: ({experiment: {...}}, {units: {...}}) for grid entries."""
    experiments, units = {}, {}
    for point in expand(config):  # grids over existing units come last: their units' labels are known by then
        if point.get("units_form"):
            drawn = units.get(point["units"])
            if point["seed"] is not None or drawn is not None:
                experiments[point["experiment"]] = {**(drawn or {"units_group": point["units"], "kmeans_seed": None}),
                                                    "lm_group": point["lm_group"], "seed": point["seed"]}
            continue
        if point["seed"] is None and point["kmeans_seed"] is None:
            continue  # no seed dimension: the entry is its own row, as if written by hand
        units[point["units"]] = {"units_group": point["units_group"], "kmeans_seed": point["kmeans_seed"]}
        experiments[point["experiment"]] = {**units[point["units"]], "lm_group": point["lm_group"],
                                            "seed": point["seed"]}
    return experiments, units
