"""Shared fixtures: a small generated demo corpus (flite) and the local SLURM cluster, each once per session; how
the tests are spread over pytest-xdist workers (make test)."""

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


# The modules whose tests use the local SLURM cluster (the `slurm_cluster` fixture): one cluster per host.
CLUSTER_MODULES = ("tests/test_slurm.py", "tests/test_rehearsal.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()) and item.nodeid.split("::")[0] not in CLUSTER_MODULES:
            raise pytest.UsageError(f"{item.nodeid} uses the SLURM cluster: add its module to CLUSTER_MODULES "
                                    "in tests/conftest.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`pytest -n N --dist loadfile` (make test): each module's tests on one worker (its module-scoped fixtures
    built once), and the modules that use the local SLURM cluster all on the same worker: a second worker would
    wait on the cluster's lock for the whole session. (pytest-xdist's `loadgroup` would say this with marks, but
    it ignores them under pytest 9.2: pytest-xdist issue #1386.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ClusterModulesTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "slurm-cluster" if module in CLUSTER_MODULES else module

    return ClusterModulesTogether(config, log)
