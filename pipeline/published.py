"""The workflow config's `report` section as eval.published reads it: our names in the published tables' spelling.

`report.published_names` (encoders, datasets, spoken_lm_set, units_quality_set, codebook_size) goes to the report as
it is; `corpus_hours` (corpus -> hours) becomes the hours of each LM (spoken-lm.csv's `hours` column), by default
the hours of an LM corpus that is a subset (`source: subset`). No torch: Snakemake calls this while parsing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common.config import ConfigError
from eval.published import PublishedNames
from pipeline import grids


def published_names(config: Mapping[str, Any]) -> PublishedNames:
    """eval.report's --published-names of a workflow config (errors name the key under report.published_names)."""
    given = dict(((config.get("report") or {}).get("published_names")) or {})
    corpus_hours = dict(given.pop("corpus_hours", None) or {})
    corpora = config.get("corpora") or {}
    for name, hours in corpus_hours.items():
        if name not in corpora:
            raise ConfigError(f"'report.published_names.corpus_hours' names corpus {name!r}, which is not defined "
                              f"({sorted(corpora)})")
        if isinstance(hours, bool) or not isinstance(hours, int | float) or hours <= 0:
            raise ConfigError(f"'report.published_names.corpus_hours.{name}' must be a positive number, got {hours!r}")
    expanded = grids.expand_grids(dict(config))
    lm_corpus = {name: lm.get("corpus") for name, lm in expanded["lms"].items()}
    for point in grids.expand(dict(config)):  # a seeded LM's rows carry its seed-free name
        if point["lm_group"] is not None:
            lm_corpus.setdefault(point["lm_group"], (point["lm_entry"] or {}).get("corpus"))
    hours = {}
    for lm, corpus in lm_corpus.items():
        value = corpus_hours.get(corpus, (corpora.get(corpus) or {}).get("hours"))
        if value is not None:
            hours[lm] = value
    return PublishedNames.from_dict({**given, "lm_hours": hours})
