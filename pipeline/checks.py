"""Entry names of the workflow config (corpora, benchmarks, encoders, units, LMs, experiments, grids): safe words.

Every output path is built from these names (`results/lm/{units}/{lm}/...`, `resources/corpora/{corpus}/...`), and
the rules' wildcards match them, so a name must be one path component that cannot climb out of the working
directory (`..`, `/`), and must not contain the `-` that separates a benchmark from its set in the `dataset`
wildcard (`demo-dev` would be read as benchmark `demo`, set `dev`). Letters, digits and `_`, starting with a letter:
such a name is one plain component, so every path built from names stays under the working directory.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from common.config import ConfigError
from data.config import ManifestConfig

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
NAME_PATTERN = f"^{NAME.pattern}$"  # the same rule in the JSON schema (workflow/schemas/config.schema.yaml)
NAMED_SECTIONS = ("corpora", "benchmarks", "encoders", "units", "lms", "experiments", "grids")


def why_unsafe(name: Any) -> str | None:
    """Why `name` cannot be an entry name, or None when it can."""
    if not isinstance(name, str) or not name:
        return "a name must be a non-empty string"
    if NAME.fullmatch(name):
        return None
    if "/" in name or "\\" in name or name in (".", ".."):
        return "it would build paths outside the working directory"
    if "-" in name:
        return "'-' separates a benchmark from its set in the workflow's dataset names (demo-dev is read as 'demo', " \
               "'dev'); use '_'"
    if not name[0].isalpha():
        return "a name starts with a letter"
    return "it has characters other than letters, digits and '_'"


def check_names(config: dict[str, Any]) -> None:
    """Raise ConfigError naming the first entry whose name is not a safe word (see the module docstring)."""
    for section in NAMED_SECTIONS:
        for name in config.get(section) or {}:
            why = why_unsafe(name)
            if why is not None:
                suggestion = re.sub(r"[^A-Za-z0-9_]+", "_", str(name)).strip("_") or "x"
                suggestion = suggestion if suggestion[0].isalpha() else f"x{suggestion}"
                raise ConfigError(f"'{section}.{name}': entry name {name!r} is not allowed ({why}): names are "
                                  f"letters, digits and '_', starting with a letter (e.g. {suggestion!r})")


def flat_audio_files(root: Path, exts: tuple[str, ...], limit: int = 3) -> list[str]:
    """Up to `limit` audio files lying directly in `root` (one directory listing, not a walk: cheap at any size)."""
    found = []
    with os.scandir(root) as entries:
        for entry in entries:
            if os.path.splitext(entry.name)[1].lower().lstrip(".") in exts and not entry.is_dir():
                found.append(entry.name)
                if len(found) == limit:
                    break
    return sorted(found)


def nested_ids(manifest: Path) -> list[str]:
    """The ids of a manifest TSV that hold a '/' ([] when it has no `id` column: the jobs name that problem)."""
    with manifest.open(newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        header = next(rows, [])
        if "id" not in header:
            return []
        column = header.index("id")
        return [row[column] for row in rows if len(row) > column and "/" in row[column]]


def check_data_layouts(config: dict[str, Any]) -> None:
    """What the data jobs would refuse, found before they run where it is cheap: a flat folder read with speaker
    folders (`speaker: dir`), ABX manifest ids that cannot match item files (a `/` in them). Inputs that do not
    exist yet are left to the jobs (a generated or later-mounted path is not an error at parse time)."""
    for name, corpus in (config.get("corpora") or {}).items():
        if corpus.get("source") != "directory" or corpus.get("speaker", "dir") != "dir":
            continue
        root = Path(corpus["root"])
        exts = tuple(e.lower().lstrip(".") for e in corpus.get("ext", ManifestConfig.ext))
        flat = flat_audio_files(root, exts) if root.is_dir() else []
        if flat:
            raise ConfigError(f"'corpora.{name}': {root} holds audio files directly ({', '.join(flat)}), but "
                              f"'speaker: dir' (the default) takes each file's first folder below root as its "
                              f"speaker; for one speaker's recordings set 'corpora.{name}.speaker: single', for "
                              "names that start with the speaker ('SPEAKER_...') set 'speaker: prefix'")
    for name, bench in (config.get("benchmarks") or {}).items():
        manifest = Path(bench["abx_manifest"]) if bench.get("source") == "paths" and "abx_manifest" in bench \
            else None
        if manifest is None or not manifest.is_file():
            continue
        nested = nested_ids(manifest)
        if nested:
            raise ConfigError(f"'benchmarks.{name}.abx_manifest': {manifest}: {len(nested)} utterance id(s) hold "
                              f"a '/' (e.g. {nested[0]!r}), which the item files' #file column (file stems) "
                              "cannot match; rebuild it with file stems as ids: python -m data.manifest AUDIO_DIR "
                              f"{manifest} --config '{{\"ids\": \"stem\", \"speaker\": \"prefix\"}}'")
