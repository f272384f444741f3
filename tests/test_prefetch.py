"""pipeline.prefetch: the Hugging Face encoders of a config, fetched ahead on the login node and checked offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.prefetch import hf_models

REPO = Path(__file__).resolve().parent.parent
PAPER_MODELS = ["facebook/hubert-base-ls960", "facebook/wav2vec2-base", "microsoft/wavlm-base"]


def _cache_model(cache: Path, model: str) -> None:
    """A model in huggingface_hub's cache layout: refs/main names a snapshot holding its config and weights."""
    folder = cache / f"models--{model.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot / "model.safetensors").write_bytes(b"")


def _check(cache: Path, *configs: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pipeline.prefetch", *configs, "--check"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_paper_recipes_hugging_face_encoders_are_listed() -> None:
    assert hf_models(yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())) == PAPER_MODELS


def test_an_offline_check_names_the_models_missing_from_the_cache_and_the_command(tmp_path: Path) -> None:
    _cache_model(tmp_path, PAPER_MODELS[0])
    done = _check(tmp_path, "configs/paper.yaml")
    assert done.returncode == 1
    expected = (f"error: not in the Hugging Face cache {tmp_path}: {PAPER_MODELS[1]}, {PAPER_MODELS[2]}; run "
                "`python -m pipeline.prefetch configs/paper.yaml`")
    assert done.stderr.startswith(expected), done.stderr
    for model in PAPER_MODELS[1:]:
        _cache_model(tmp_path, model)
    done = _check(tmp_path, "configs/paper.yaml")
    assert done.returncode == 0, done.stderr
    assert "3 Hugging Face model(s) ready" in done.stderr and done.stdout.count("snapshots") == 3
