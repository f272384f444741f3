"""Fill the Hugging Face cache with a workflow config's `kind: hf` encoders ahead of a cluster run (on the login
node, which has internet), so that compute nodes run offline (HF_HUB_OFFLINE=1) and never download at job time.

    python -m pipeline.prefetch configs/paper.yaml [MORE.yaml ...]           # download what is missing
    HF_HUB_OFFLINE=1 python -m pipeline.prefetch configs/paper.yaml --check  # only check the cache, offline

Config files merge top-level keys in order, as `--configfile A B` does. The cache is huggingface_hub's:
HF_HUB_CACHE (or HF_HOME/hub, default ~/.cache/huggingface/hub); it must be on a filesystem the compute nodes
share, with the same variable exported when Snakemake submits (jobs get `--export=ALL`). Only what
AutoModel / AutoFeatureExtractor read is fetched: configs, weights (safetensors, or PyTorch's .bin) and vocab files.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from common.cli import run_main

PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]


class PrefetchError(RuntimeError):
    """A model that is not in the cache (with --check) or could not be downloaded."""


def hf_models(config: dict[str, Any]) -> list[str]:
    """The Hugging Face model names of the config's `kind: hf` encoders, in order, each once."""
    models = [entry["model"] for entry in (config.get("encoders") or {}).values()
              if isinstance(entry, dict) and entry.get("kind") == "hf" and entry.get("model")]
    return list(dict.fromkeys(models))


def load_configs(paths: list[Path]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for path in paths:
        config.update(yaml.safe_load(path.read_text()) or {})
    return config


def cached(model: str) -> Path | None:
    """The model's snapshot folder in the cache when its config and weights are there, else None (no network)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    if Path(model).is_dir():  # a local folder, not a hub name
        return Path(model)
    try:
        folder = Path(snapshot_download(model, allow_patterns=PATTERNS, local_files_only=True))
    except LocalEntryNotFoundError:
        return None
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    return folder if (folder / "config.json").is_file() and has_weights else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", type=Path, help="workflow config files (e.g. configs/paper.yaml)")
    parser.add_argument("--check", action="store_true", help="only check that every model is cached (offline)")
    opts = parser.parse_args(argv)
    models = hf_models(load_configs(opts.configs))
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    missing = []
    for model in models:
        folder = cached(model)
        if folder is None and not opts.check:
            from huggingface_hub import snapshot_download

            try:
                snapshot_download(model, allow_patterns=PATTERNS)
            except Exception as err:  # network, authentication, unknown name: one line naming the model
                raise PrefetchError(f"{model}: download failed ({type(err).__name__}: {err}); on a node with "
                                    "internet, rerun this command") from None
            folder = cached(model)
        if folder is None:
            missing.append(model)
        else:
            print(f"{model}: {folder}")
    if missing:
        raise PrefetchError(f"not in the Hugging Face cache {cache}: {', '.join(missing)}; run `python -m "
                            f"pipeline.prefetch {' '.join(map(str, opts.configs))}` on a node with internet (the "
                            "login node) with the same HF_HUB_CACHE")
    print(f"{len(models)} Hugging Face model(s) ready in {cache}; run the workflow with HF_HUB_OFFLINE=1",
          file=sys.stderr)


if __name__ == "__main__":
    run_main(main)
