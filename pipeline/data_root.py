"""`data_root`: one setting for where a recipe's data lives (configs/paper.yaml sets `data_root: /data`).

Relative data paths of the workflow's config (corpus roots and manifests, benchmark files and folders, given
encoder checkpoints) are resolved against `data_root`, so pointing a whole recipe at another copy of the data is
one override: `snakemake ... --config data_root=/scratch/me/data`. Absolute paths are used as they are; without a
`data_root`, relative paths stay relative to the working directory (the workflow's root), as before. Hugging Face
model names are hub names, not paths: they are left alone (offline nodes read them from HF_HUB_CACHE).

The workflow applies this once, before validation (workflow/rules/common.smk), so every rule and every job sees
resolved paths. No torch, no file system access: a dry run of a tree that does not exist yet still plans.
"""

from __future__ import annotations

import copy
import os
from typing import Any

from common.config import ConfigError

# Keys that hold data paths, per section (a key absent from an entry is skipped).
CORPUS_KEYS = ("root", "manifest")
BENCHMARK_KEYS = ("lexical", "syntactic", "sSC", "tSC", "abx_manifest", "triphone_item", "phoneme_item", "phones")
ENCODER_KEYS = ("checkpoint",)
SECTIONS = {"corpora": CORPUS_KEYS, "benchmarks": BENCHMARK_KEYS, "encoders": ENCODER_KEYS}


def resolve(config: dict[str, Any]) -> dict[str, Any]:
    """The sections of `config` that hold data paths, with relative paths joined to `data_root` (a copy).

    Returns {} without a `data_root`, so `config.update(resolve(config))` changes nothing then.
    """
    root = config.get("data_root")
    if root is None:
        return {}
    if not isinstance(root, str) or not root.strip():
        raise ConfigError(f"'data_root' must be a directory path (a string), got {root!r}; e.g. data_root: /data")
    resolved: dict[str, Any] = {}
    for section, keys in SECTIONS.items():
        entries = config.get(section)
        if not isinstance(entries, dict):
            continue
        out = copy.deepcopy(entries)
        for entry in out.values():
            if not isinstance(entry, dict):
                continue
            for key in keys:
                value = entry.get(key)
                if isinstance(value, str) and value and not os.path.isabs(value):
                    entry[key] = os.path.join(root, value)
        resolved[section] = out
    return resolved
