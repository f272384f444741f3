"""pipeline.grids: a grid expands into ordinary units, LMs and experiments with readable names and seed labels."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from common.config import ConfigError
from pipeline import config as pipeline
from pipeline.grids import draw_labels, expand_grids

ROOT = Path(__file__).resolve().parents[1]


def base() -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["grids"] = {}
    return config


def test_demo_grid_keeps_the_hand_written_names() -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    expanded = expand_grids(config)
    assert {"spidr_kmeans_l4", "spidr_kmeans_l6"} <= set(expanded["experiments"])
    assert expanded["units"]["spidr_kmeans_l6"] == {"encoder": "spidr_small", "layer": 6, "quantizer": "kmeans",
                                                    "k": 256, "fit": {"corpus": "demo", "seed": 0,
                                                                      "max_frames": 100000}}
    assert expanded["experiments"]["spidr_kmeans_l4"] == {"units": "spidr_kmeans_l4", "lm": "tiny"}
    assert expanded["lms"] == config["lms"]  # no seed dimension: the LM itself
    assert expand_grids(expanded) == expanded  # idempotent (Snakemake jobs expand again)
    pipeline.validate(config)


def test_product_names_seeds_and_labels() -> None:
    config = base()
    config["grids"]["g"] = {"encoder": "spidr_small", "layer": [4, 6], "quantizer": ["codebook", "kmeans"],
                            "k": [64, 256], "fit": {"corpus": "demo"}, "lm": "tiny", "seed": [0, 1]}
    expanded = expand_grids(config)
    new = sorted(set(expanded["experiments"]) - set(config["experiments"]))
    # codebook units have no K: 2 layers x (1 codebook + 2 K) x 2 seeds
    assert len(new) == 12
    assert "g_l4_codebook_tiny_s0" not in new and "g_l4_codebook_s0" in new and "g_l6_kmeans_k64_s1" in new
    assert expanded["experiments"]["g_l6_kmeans_k64_s1"] == {"units": "g_l6_kmeans_k64", "lm": "tiny_s1"}
    assert expanded["lms"]["tiny_s1"]["train"]["seed"] == 1
    assert expanded["lms"]["tiny_s1"]["train"]["max_steps"] == config["lms"]["tiny"]["train"]["max_steps"]
    assert expanded["units"]["g_l4_codebook"] == {"encoder": "spidr_small", "layer": 4, "quantizer": "codebook"}
    experiments, _ = draw_labels(config)
    assert experiments["g_l6_kmeans_k64_s1"] == {"units_group": "g_l6_kmeans_k64", "kmeans_seed": None,
                                                 "lm_group": "tiny", "seed": 1}
    # The labels of the two seed draws differ only in the seed: the report makes them one row.
    a = pipeline.experiment(expanded, "g_l6_kmeans_k64_s0", "demo").labels()
    b = pipeline.experiment(expanded, "g_l6_kmeans_k64_s1", "demo").labels()
    assert {k for k in a if a[k] != b[k]} == {"experiment", "seed"} and a["lm"] == "tiny" and a["set"] == "demo"
    pipeline.validate(config)


def test_kmeans_seeds_and_lm_corpus() -> None:
    config = base()
    config["grids"]["m"] = {"encoder": "mfcc", "layer": 0, "quantizer": "kmeans", "k": 256,
                            "fit": {"corpus": "demo", "max_frames": 1000}, "kmeans_seed": [3, 4], "lm": "tiny",
                            "lm_corpus": "demo"}
    expanded = expand_grids(config)
    assert expanded["units"]["m_ks3"]["fit"] == {"corpus": "demo", "max_frames": 1000, "seed": 3}
    assert expanded["experiments"]["m_ks4"] == {"units": "m_ks4", "lm": "tiny_demo"}
    _, units = draw_labels(config)
    assert units["m_ks4"] == {"units_group": "m", "kmeans_seed": 4}
    labels = pipeline.units_experiment(expanded, "m_ks4", "demo").labels()
    assert labels["units"] == "m" and labels["kmeans_seed"] == 4


def test_errors_name_the_grid_and_key() -> None:
    config = base()
    bad = copy.deepcopy(config)
    bad["grids"]["g"] = {"encoder": "mfcc", "layer": 0, "quantizer": "kmeans", "k": 256, "lm": "tiny"}
    with pytest.raises(ConfigError, match=r"'grids.g': quantizer kmeans needs 'k' and 'fit'"):
        pipeline.validate(bad)
    bad["grids"]["g"] = {"encoder": "mfcc", "layer": 0, "quantizer": "codebook", "lm": "nope"}
    with pytest.raises(ConfigError, match=r"'grids.g.lm' refers to LM 'nope'"):
        pipeline.validate(bad)
    bad["grids"]["g"] = {"encoder": "mfcc", "layer": [0, 0], "quantizer": "codebook"}
    with pytest.raises(ConfigError, match=r"'grids.g.layer' repeats a value"):
        pipeline.validate(bad)
    # A name already taken by a different entry is refused, naming both.
    bad["grids"]["mfcc_kmeans"] = {"encoder": "mfcc", "layer": 0, "quantizer": "kmeans", "k": 50,
                                   "fit": {"corpus": "demo"}}
    bad["grids"].pop("g")
    with pytest.raises(ConfigError, match=r"'grids.mfcc_kmeans' expands to 'mfcc_kmeans', which is already defined"):
        pipeline.validate(bad)
    empty = base()
    empty["experiments"] = {}
    with pytest.raises(ConfigError, match="no experiment"):
        pipeline.validate(empty)
