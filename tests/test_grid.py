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


def test_codebook_probs_and_a_grid_over_existing_units() -> None:
    config = base()
    config["corpora"]["small"] = {"source": "subset", "of": "demo", "hours": 0.1, "seed": 0}
    config["grids"]["cb"] = {"encoder": "spidr_small", "layer": [4, 6], "quantizer": ["codebook", "kmeans"], "k": 64,
                             "fit": {"corpus": "demo"}, "abx_codebook_probs": True, "lm": "tiny"}
    config["grids"]["scaling"] = {"units": ["cb_l6_kmeans", "mfcc_kmeans"], "lm": "tiny", "lm_corpus": "small",
                                  "seed": [0, 1]}
    expanded = expand_grids(config)
    # the codebook units get the probabilities' ABX, the k-means units of the same grid do not
    assert expanded["units"]["cb_l4_codebook"]["abx_codebook_probs"] is True
    assert "abx_codebook_probs" not in expanded["units"]["cb_l4_kmeans"]
    # a grid over existing units (one from another grid, one written by hand) adds LMs and experiments only
    assert set(expanded["units"]) == set(expand_grids({**config, "grids": {"cb": config["grids"]["cb"]}})["units"])
    assert expanded["experiments"]["scaling_cb_l6_kmeans_s1"] == {"units": "cb_l6_kmeans", "lm": "tiny_small_s1"}
    assert expanded["experiments"]["scaling_mfcc_kmeans_s0"] == {"units": "mfcc_kmeans", "lm": "tiny_small_s0"}
    lm = expanded["lms"]["tiny_small_s1"]
    assert lm["corpus"] == "small" and lm["train"]["seed"] == 1
    experiments, _ = draw_labels(config)
    assert experiments["scaling_mfcc_kmeans_s1"] == {"units_group": "mfcc_kmeans", "kmeans_seed": None,
                                                     "lm_group": "tiny_small", "seed": 1}
    pipeline.validate(config)
    bad = copy.deepcopy(config)
    bad["grids"]["scaling"]["units"] = ["nope"]
    with pytest.raises(ConfigError, match=r"'grids.scaling.units' refers to units 'nope', which is not defined"):
        pipeline.validate(bad)
    bad["grids"]["scaling"] = {"units": "mfcc_kmeans", "layer": 3, "lm": "tiny"}
    with pytest.raises(ConfigError, match=r"'grids.scaling': \['layer'\] cannot go with 'units'"):
        pipeline.validate(bad)
    bad["grids"]["scaling"] = {"encoder": "mfcc", "layer": 0, "quantizer": "codebook", "abx_codebook_probs": "yes"}
    with pytest.raises(ConfigError, match=r"'grids.scaling.abx_codebook_probs' must be true or false"):
        pipeline.validate(bad)


def test_the_paper_recipe_covers_the_published_sweeps() -> None:
    """configs/paper.yaml: the configurations of the SpidR paper's spoken-lm.csv (but its text topline) as
    experiments, and the layers of its ABX and unit-quality tables as units."""
    config = yaml.safe_load((ROOT / "configs/paper.yaml").read_text())
    expanded = expand_grids(config)
    corpus_hours = {"librilight600": 600, "librilight6k": 6000, "librilight60k": 60000}
    rows = set()
    for exp in expanded["experiments"].values():
        if exp.get("lm") is None:
            continue
        unit = expanded["units"][exp["units"]]
        rows.add((unit["encoder"], unit["quantizer"], unit.get("k", 256), unit["layer"],
                  corpus_hours[expanded["lms"][exp["lm"]]["corpus"]]))
    published = {("spidr_base", "codebook", 256, layer, 6000) for layer in range(5, 13)}
    published |= {("spidr_base", "kmeans", 256, layer, 6000) for layer in range(1, 13)}
    published |= {("spidr_base", "kmeans", k, 6, 6000) for k in (50, 100, 200, 500)}
    published |= {("hubert_base", "kmeans", 256, layer, 6000) for layer in range(1, 13)}
    published |= {("wav2vec2_base", "kmeans", 256, 6, 6000), ("wavlm_base", "kmeans", 256, 11, 6000)}
    scaled = [("spidr_base", "codebook", 6), ("spidr_base", "kmeans", 6), ("hubert_base", "kmeans", 11)]
    scaled += [(enc, q, 5) for enc in ("dinosr_original", "dinosr_base") for q in ("codebook", "kmeans")]
    published |= {(enc, q, 256, layer, hours) for enc, q, layer in scaled for hours in corpus_hours.values()}
    assert len(published) == 56  # spoken-lm.csv's 59 configurations less the 3 text toplines
    assert published <= rows and rows - published == {("spidr_release", "codebook", 256, 6, 6000)}
    layers = {(u["encoder"], u["quantizer"], u["layer"]) for u in expanded["units"].values()}
    for encoder in ("spidr_base", "dinosr_original", "dinosr_base"):  # codebook layers; every layer's features
        assert {(encoder, "codebook", layer) for layer in range(5, 13)} <= layers
        assert {layer for enc, _, layer in layers if enc == encoder} == set(range(1, 13))
    assert {("hubert_base", "kmeans", layer) for layer in range(1, 13)} <= layers
    probs = pipeline.codebook_probs_layers(expanded, list(expanded["units"]))
    encoders = ("spidr_base", "dinosr_original", "dinosr_base")
    assert {(e, layer) for e in encoders for layer in range(5, 13)} == set(probs)
