"""ABX on codebook-head probabilities: enabled per units entry (`abx_codebook_probs`), one extraction and two ABX
jobs per encoder layer, labelled as their own Quantizer row, and out of every other job's --config."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

import pipeline.config as pc
from common.config import ConfigError, dumps
from eval.abx import AbxConfig, run
from tests.test_eval_abx import make_corpus
from tests.test_workflow import default_config, planned_jobs


def with_flag(config: dict, units: str = "spidr_codebook_l6") -> dict:
    config = copy.deepcopy(config)
    config["units"][units]["abx_codebook_probs"] = True
    return config


def test_flag_is_checked_and_kept_out_of_the_units_jobs() -> None:
    base = pc.grids.expand_grids(default_config())
    on = with_flag(base)
    pc.validate(on)
    # turning it on reruns nothing else: the units config JSON of every units job is unchanged
    assert dumps(pc.units_config(on, "spidr_codebook_l6")) == dumps(pc.units_config(base, "spidr_codebook_l6"))
    assert pc.codebook_probs_layers(on, list(on["units"])) == [("spidr_small", 6)]
    assert pc.codebook_probs_layers(base, list(base["units"])) == []
    with pytest.raises(ConfigError, match=r"'units\.mfcc_kmeans\.abx_codebook_probs' needs quantizer 'codebook'"):
        pc.validate(with_flag(base, "mfcc_kmeans"))


def test_dry_run_schedules_one_extraction_and_both_item_kinds(tmp_path: Path) -> None:
    jobs = planned_jobs(tmp_path, with_flag(default_config()))
    assert jobs["extract_codebook_probs"] == 1 and jobs["eval_abx_codebook_probs"] == 2
    (tmp_path / "off").mkdir()
    assert "extract_codebook_probs" not in planned_jobs(tmp_path / "off", default_config())


def test_probabilities_folder_is_its_own_quantizer_row(tmp_path: Path) -> None:
    make_corpus(tmp_path)
    probs = tmp_path / "probs"
    shutil.copytree(tmp_path / "feats", probs)
    (probs / "_CONFIG.json").write_text(json.dumps({"representation": "codebook_probs", "layer": 6}))
    cfg = AbxConfig(speakers=("within",))
    labels = {"encoder": "spidr_small", "layer": 6, "quantizer": "continuous"}
    got = run(tmp_path / "triphone.item", tmp_path / "p.json", features=probs, units_path=None, frame_rate=None,
              cfg=cfg, labels=labels)
    feats = run(tmp_path / "triphone.item", tmp_path / "f.json", features=tmp_path / "feats", units_path=None,
                frame_rate=None, cfg=cfg, labels=labels)
    assert got["labels"]["quantizer"] == "codebook_probs" and feats["labels"]["quantizer"] == "continuous"
    assert got["metrics"][0]["conventions"]["input"].startswith("codebook-head probabilities")
    assert got["metrics"][0]["value"] == feats["metrics"][0]["value"]  # same tensors, same ABX: only labels differ
    (probs / "_CONFIG.json").write_text(json.dumps({"representation": "logits"}))
    with pytest.raises(ValueError, match=r"_CONFIG\.json: representation 'logits'"):
        run(tmp_path / "triphone.item", tmp_path / "x.json", features=probs, units_path=None, frame_rate=None,
            cfg=cfg, labels=labels)
