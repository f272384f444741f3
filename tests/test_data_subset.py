"""Nested seeded subsets by hours (data.subset): containment, seeds, order independence, config and DAG."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import ConfigError
from data.audio import SAMPLE_RATE
from data.config import SubsetConfig
from data.manifest import ManifestError, read_manifest, write_manifest
from data.subset import make_subset, select_subset
from pipeline.config import subset_config
from tests.test_workflow import default_config, planned_jobs


def parent_table(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """A LibriSpeech-like manifest: 1-20 s utterances with path ids (the audio need not exist to draw a subset)."""
    rng = np.random.default_rng(seed)
    ids = [f"{i % 7}/{i % 3}/{i % 7}-{i % 3}-{i:04d}" for i in range(n)]
    return pd.DataFrame({"id": ids, "path": [f"/data/{uid}.flac" for uid in ids],
                         "num_samples": rng.integers(SAMPLE_RATE, 20 * SAMPLE_RATE, n),
                         "speaker": [uid.split("/")[0] for uid in ids]})


def hours(table: pd.DataFrame) -> float:
    return float(table["num_samples"].sum()) / SAMPLE_RATE / 3600


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_smaller_subsets_are_inside_larger_ones(seed: int) -> None:
    table = parent_table()
    drawn = {h: select_subset(table, h, seed) for h in (0.05, 0.2, 0.6, 1.0)}
    for small, large in ((0.05, 0.2), (0.2, 0.6), (0.6, 1.0)):
        assert set(drawn[small]["id"]) < set(drawn[large]["id"])
    for h, subset in drawn.items():
        # At most the hours asked for, and short of them by less than the longest utterance.
        assert h - 20 / 3600 < hours(subset) <= h
        order = {uid: i for i, uid in enumerate(table["id"])}
        assert subset["id"].map(order).is_monotonic_increasing  # the parent's row order
        assert list(subset.columns) == list(table.columns)


def test_the_seed_changes_the_draw_and_the_parent_order_does_not() -> None:
    table = parent_table()
    a, b = select_subset(table, 0.5, 0), select_subset(table, 0.5, 1)
    assert set(a["id"]) != set(b["id"])
    shuffled = table.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert set(select_subset(shuffled, 0.5, 0)["id"]) == set(a["id"])


def test_subset_errors_name_the_manifest(tmp_path: Path) -> None:
    table = parent_table(20)
    with pytest.raises(ManifestError, match=r"m\.tsv: a subset of 5 h asks for more than the parent's 0\.0\d+ h"):
        select_subset(table, 5, 0, "m.tsv")
    with pytest.raises(ManifestError, match="holds no utterance"):
        select_subset(table, 0.5 / 3600, 0, "m.tsv")


def test_make_subset_writes_a_readable_manifest(tmp_path: Path) -> None:
    table = parent_table(50)
    write_manifest(table, tmp_path / "parent.tsv")
    log = io.StringIO()
    subset = make_subset(tmp_path / "parent.tsv", tmp_path / "s/manifest.tsv", SubsetConfig("p", 0.05, 2), log=log)
    back = read_manifest(tmp_path / "s/manifest.tsv")
    assert back["id"].tolist() == subset["id"].tolist() and back["path"].tolist() == subset["path"].tolist()
    assert f"{len(subset)} of 50 utterances of p" in log.getvalue()


def config_with(**corpora: dict) -> dict:
    config = copy.deepcopy(default_config())
    config["corpora"].update(corpora)
    return config


@pytest.mark.parametrize(("corpora", "message"), [
    ({"s": {"source": "subset", "of": "nowhere", "hours": 1}}, r"'corpora\.s\.of' refers to corpus 'nowhere'"),
    ({"s": {"source": "subset", "of": "t", "hours": 1}, "t": {"source": "subset", "of": "s", "hours": 2}},
     r"subsets form a cycle \(s -> t -> s\)"),
    ({"s": {"source": "subset", "of": "demo", "hours": 0}}, r"'corpora\.s\.hours': 0 is out of range"),
    ({"s": {"source": "subset", "of": "demo", "hours": 1, "sed": 1}}, r"unknown key\(s\) \['corpora\.s\.sed'\]"),
])
def test_subset_config_errors_name_the_key(corpora: dict, message: str) -> None:
    config = config_with(**corpora)
    with pytest.raises(ConfigError, match=message):
        subset_config(config, "s")


def test_subset_corpora_are_drawn_from_their_parent_in_the_dag(tmp_path: Path) -> None:
    config = config_with(small={"source": "subset", "of": "demo", "hours": 0.05, "seed": 0},
                         tiny={"source": "subset", "of": "small", "hours": 0.02, "seed": 0})
    lm = next(iter(config["lms"]))
    config["lms"][lm]["corpus"] = "tiny"
    jobs = planned_jobs(tmp_path, config)
    assert jobs["subset"] == 2  # tiny is drawn from small, drawn from the demo corpus
