"""Shared fixtures: a small generated demo corpus (flite) and the local SLURM cluster, each once per session; how
the tests are spread over pytest-xdist workers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# Small enough to build in a few seconds, large enough for every layout to be non-trivial.
SMALL_DEMO = {
    "train_sentences": 12,
    "train_voices_per_sentence": 2,
    "dev_sentences": 3,
    "lexical_pairs": 4,
    "syntactic_pairs": 6,
    "storycloze_stories": 3,
}


def require_flite() -> None:
    """Skip without flite, except under `make test` (TEXTLESS_STRICT=1), which installs it: there it is a failure."""
    if shutil.which("flite") is None:
        message = "Debian package 'flite' is not installed (make test installs it)"
        if os.environ.get("TEXTLESS_STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small demo corpus in the official layouts (see data/demo.py), read-only for tests."""
    require_flite()
    from data.demo import DemoConfig, generate

    out = tmp_path_factory.mktemp("demo")
    generate(out, DemoConfig.from_dict(SMALL_DEMO), threads=2)
    return out


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Path]:
    """The local two-node SLURM cluster (tests/slurm_cluster.py), one per test session; its state directory."""
    from tests.slurm_cluster import local_cluster

    with local_cluster() as state:
        yield state


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `pytest -n N --dist loadgroup` (make test): a module's tests run on one worker, so its module-scoped
    fixtures (a completed DAG, a generated tree) are built once; and every test on the local SLURM cluster runs on
    one worker, since there is one cluster per host and a second worker would wait on its lock for the session."""
    for item in items:
        group = "slurm-cluster" if "slurm_cluster" in getattr(item, "fixturenames", ()) else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
