"""Tests of the Snakemake workflow itself: config validation, the DAG's stages, and what a dry run schedules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's workflow in `workdir`, with the default config or `config`."""
    configfile = REPO / "config.yaml"
    if config is not None:
        configfile = workdir / "test-config.yaml"
        configfile.write_text(yaml.safe_dump(config))
    return subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(configfile), *args],
                          capture_output=True, text=True, timeout=300)


def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def test_dry_run_of_the_default_config_schedules_the_data_stage(tmp_path: Path) -> None:
    out = snakemake(tmp_path, "-n", "--quiet", "rules")
    assert out.returncode == 0, out.stderr
    assert "demo_data" in out.stdout


def test_a_typo_in_the_config_is_an_error_naming_the_key(tmp_path: Path) -> None:
    config = default_config()
    config["demo"]["train_sentence"] = 3
    out = snakemake(tmp_path, "-n", config=config)
    assert out.returncode != 0
    assert "train_sentence" in out.stdout + out.stderr and "Additional properties" in out.stdout + out.stderr


def test_a_bad_value_is_an_error_naming_it(tmp_path: Path) -> None:
    config = default_config()
    config["demo"]["voices"] = ["slt", "nosuchvoice"]
    out = snakemake(tmp_path, "-n", config=config)
    assert out.returncode != 0 and "nosuchvoice" in out.stdout + out.stderr


def test_directory_corpus_gets_a_manifest_rule(tmp_path: Path) -> None:
    config = default_config()
    config["corpora"]["libri"] = {"source": "directory", "root": str(tmp_path / "LibriSpeech"), "ext": ["flac"]}
    out = snakemake(tmp_path, "-n", "--quiet", "rules", config=config)
    assert out.returncode == 0, out.stderr
    assert "manifest" in out.stdout


@pytest.mark.parametrize("path", ["Snakefile", "workflow/rules"])
def test_snakefmt_clean(path: str) -> None:
    out = subprocess.run([sys.executable, "-m", "snakefmt", "--check", str(REPO / path)], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr + out.stdout
