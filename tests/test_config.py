"""The typed config loader (common.config), the workflow's whole-config check (pipeline.validate, torch-free) and
the same checks at each entry point's `--config`."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from common.config import ConfigError, dumps, field, load, loads
from lm.config import PRESET_NAMES, TrainConfig

REPO = Path(__file__).resolve().parent.parent


# --- the loader ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inner:
    prob: float = field(0.5, ge=0, le=1)
    steps: int | None = field(None, ge=1)


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner = dataclasses.field(default_factory=Inner)
    mode: Literal["a", "b"] = "a"
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[float, float] = (0.0, 1.0)
    extra: dict[str, Any] | None = None
    flag: bool = False


def test_loader_builds_nested_frozen_dataclasses_with_defaults() -> None:
    cfg = load(Outer, {"name": "x", "inner": {"steps": 3.0}, "sizes": [4], "pair": [1, 2], "extra": {"k": [1]}})
    assert cfg == Outer("x", Inner(0.5, 3), "a", (4,), (1.0, 2.0), {"k": [1]}, False)
    assert isinstance(cfg.inner.steps, int) and isinstance(cfg.pair[0], float)
    assert loads(Outer, dumps(cfg)) == cfg  # what a rule passes round-trips
    assert dumps(cfg) == dumps(load(Outer, dict(reversed(list(json.loads(dumps(cfg)).items())))))


@pytest.mark.parametrize(("values", "message"), [
    ({"name": "x", "inner": {"prb": 1}}, r"'top.inner': unknown key\(s\) \['top.inner.prb'\]; known keys: \['prob'"),
    ({"name": "x", "inner": {"prob": 2.0}}, r"'top.inner.prob': 2.0 is out of range; expected .* in \[0, 1\]"),
    ({"name": "x", "inner": {"prob": -0.5}}, r"'top.inner.prob': -0.5 is out of range"),
    ({"name": "x", "inner": {"steps": 0}}, r"'top.inner.steps': 0 is out of range; expected .* >= 1"),
    ({"name": "x", "inner": {"steps": "ten"}}, r"'top.inner.steps': expected an integer, got 'ten'"),
    ({"name": "x", "inner": {"steps": 1.5}}, r"'top.inner.steps': expected an integer, got 1.5"),
    ({"name": "x", "mode": "c"}, r"'top.mode': 'c' is not allowed; expected one of \['a', 'b'\]"),
    ({"name": "x", "sizes": [1, "2"]}, r"'top.sizes\[1\]': expected an integer"),
    ({"name": "x", "pair": [1]}, r"'top.pair': expected a list of 2 values"),
    ({"name": "x", "flag": 1}, r"'top.flag': expected true/false, got 1"),
    ({"name": 3}, r"'top.name': expected a string, got 3"),
    ({"name": "x", "inner": 3}, r"'top.inner': expected a JSON object \(Inner\)"),
    ({}, r"'top': missing key 'top.name'"),
])
def test_loader_errors_name_the_full_key_path_and_what_was_expected(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(Outer, values, "top")


def test_loads_names_bad_json_and_a_non_object() -> None:
    with pytest.raises(ConfigError, match="--config is not valid JSON"):
        loads(Outer, "{name: x}")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        loads(Outer, "[1]")


def test_lm_preset_names_match_the_model_presets() -> None:
    from lm.model import PRESETS

    assert set(PRESET_NAMES) == set(PRESETS)
    with pytest.raises(ConfigError, match=r"'preset': 'gpt5' is not allowed; expected one of \['opt-125m'"):
        TrainConfig.from_dict({"preset": "gpt5"})


# --- pipeline.validate: every probe of the reliability issue fails when the workflow is parsed ------------------


def default_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def with_value(path: tuple, value: Any) -> dict:
    config = copy.deepcopy(default_config())
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return config


PROBES = [
    (("lms", "tiny", "train", "max_steps"), -1, r"'lms.tiny.train.max_steps': -1 is out of range; expected .* >= 1"),
    (("lms", "tiny", "train", "max_steps"), 0, r"'lms.tiny.train.max_steps': 0 is out of range"),
    (("lms", "tiny", "train", "max_steps"), "ten", r"'lms.tiny.train.max_steps': expected an integer, got 'ten'"),
    (("encoders", "spidr_small", "train", "optim"), {"lr": -1},
     r"'encoders.spidr_small.train.optim.lr': -1 is out of range; expected .* > 0"),
    (("encoders", "spidr_small", "train", "mask"), {"prob": 2.0},
     r"'encoders.spidr_small.train.mask.prob': 2.0 is out of range; expected .* in \[0, 1\]"),
    (("encoders", "spidr_small", "train", "mask"), {"prob": -0.5}, r"'encoders.spidr_small.train.mask.prob': -0.5"),
    (("eval", "abx", "slicer"), "fastabx", r"'eval.abx': unknown key\(s\) \['eval.abx.slicer'\]"),
    (("eval", "bad_audio"), "skip", r"'eval.bad_audio' has moved to extraction.bad_audio"),
    (("extraction", "bad_audio"), "ignore", r"'extraction.bad_audio': 'ignore' is not allowed"),
    (("eval", "benchmark"), "demo", r"'eval.benchmark' has moved to eval.benchmarks \(a list"),
    (("eval", "benchmarks"), ["demo", "nope"], r"'eval.benchmarks\[1\]' refers to benchmark 'nope'"),
    (("eval", "benchmarks"), ["demo", "demo"], r"'eval': 'benchmarks' names \['demo'\] more than once"),
    (("benchmarks", "pooled"), {"source": "pooled", "of": ["demo", "lex"]},
     r"'benchmarks.pooled.of\[1\]' refers to benchmark 'lex'"),
    (("benchmarks", "lex"), {"source": "paths", "lexical": "/x/lexical/dev"}, None),
    (("benchmarks", "empty"), {"source": "paths"}, r"'benchmarks.empty' names no evaluation set"),
    (("units", "mfcc_kmeans", "fit", "niter"), 0, r"'units.mfcc_kmeans.fit.niter': 0 is out of range"),
    (("units", "mfcc_kmeans", "k"), 1, r"'units.mfcc_kmeans.k': 1 is out of range; expected .* >= 2"),
    (("units", "spidr_codebook_l6", "layer"), 2,
     r"'units.spidr_codebook_l6': quantizer='codebook' at layer=2: this encoder has codebook heads only on layers"),
    (("units", "spidr_codebook_l6", "layer"), 9, r"'units.spidr_codebook_l6': layer=9 is beyond"),
    (("units", "mfcc_kmeans", "quantizer"), "codebook", r"'units.mfcc_kmeans': 'k' and 'fit' are only for"),
    (("demo", "voices"), ["slt", "nosuchvoice"], r"'demo.voices\[1\]': 'nosuchvoice' is not allowed"),
    (("demo", "train_sentences"), 0, r"'demo.train_sentences': 0 is out of range"),
    (("corpora", "libri"), {"source": "directory", "root": "/x", "speaker": "chapter"},
     r"'corpora.libri.speaker': 'chapter' is not allowed"),
    (("experiments", "mfcc_kmeans", "lm"), "nosuchlm", r"'experiments.mfcc_kmeans.lm' refers to lm 'nosuchlm'"),
]


@pytest.mark.parametrize(("path", "value", "message"), PROBES, ids=lambda x: str(x)[:40])
def test_validate_names_the_key_of_each_bad_value(path: tuple, value: Any, message: str | None) -> None:
    from pipeline.config import validate

    if message is None:  # a valid probe: the check is not over-eager
        validate(with_value(path, value))
        return
    with pytest.raises(ConfigError, match=message):
        validate(with_value(path, value))


def test_pooled_parts_need_abx_audio_and_phones() -> None:
    from pipeline.config import validate

    config = with_value(("benchmarks", "lex"), {"source": "paths", "lexical": "/x/lexical/dev"})
    config["benchmarks"]["pooled"] = {"source": "pooled", "of": ["demo", "lex"]}
    with pytest.raises(ConfigError, match=r"'benchmarks.pooled.of\[1\]': 'lex' has no ABX audio and phone labels"):
        validate(config)


def test_validate_accepts_the_shipped_configs_and_imports_no_torch() -> None:
    code = ("import sys, yaml; from pipeline.config import validate\n"
            "for path in ('config.yaml', 'configs/test.yaml', 'configs/paper.yaml'):\n"
            "    validate(yaml.safe_load(open(path)))\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'fastabx', 'pandas') if m in sys.modules)\n"
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_job_configs_carry_the_resolved_defaults_and_the_labels() -> None:
    from pipeline.config import experiment, grids, units_config

    config = grids.expand_grids(default_config())  # the functions take the expanded config (the workflow's)
    units = units_config(config, "spidr_kmeans_l6")
    assert units.fit.niter == 50 and units.fit.max_frames == 100_000 and units.extraction.bad_audio == "fail"
    assert units.encoder.checkpoint == "results/encoders/spidr_small/checkpoint.pt"
    assert experiment(config, "mfcc_kmeans").labels() == {
        "experiment": "mfcc_kmeans", "lm": "tiny", "units": "mfcc_kmeans", "encoder": "mfcc", "encoder_kind": "mfcc",
        "layer": 0, "quantizer": "kmeans", "k": 256, "set": None, "seed": None, "kmeans_seed": None}


# --- the same checks at each entry point's --config -----------------------------------------------------------------


def test_lm_train_config_rejects_the_probes() -> None:
    from lm.train import main

    for value, message in ((-1, "out of range"), (0, "out of range"), ("ten", "expected an integer")):
        with pytest.raises(ConfigError, match=rf"'max_steps': .*{message}"):
            main(["--units", "u.parquet", "--workdir", "w", "--out", "m",
                  "--config", json.dumps({"max_steps": value})])


@pytest.mark.parametrize(("config", "message"), [
    ({"preset": "tiny", "optim": {"lr": -1}}, r"'optim.lr': -1 is out of range"),
    ({"preset": "tiny", "mask": {"prob": 2.0}}, r"'mask.prob': 2.0 is out of range"),
    ({"preset": "tiny", "mask": {"prob": -0.5}}, r"'mask.prob': -0.5 is out of range"),
])
def test_spidr_train_config_rejects_the_probes(tmp_path: Path, config: dict, message: str) -> None:
    from spidr.train import main

    with pytest.raises(ConfigError, match=message):
        main(["--manifest", "m.tsv", "--workdir", str(tmp_path / "w"), "--out", str(tmp_path / "c.pt"),
              "--config", json.dumps(config)])


def test_eval_and_units_entry_points_reject_unknown_keys(tmp_path: Path) -> None:
    from eval.abx import main as abx_main
    from lm.score import main as score_main
    from units.kmeans import main as kmeans_main

    with pytest.raises((ValueError, OSError), match=r"unknown key\(s\) \['abx.slicer'\]"):
        abx_main(["--item", "x.item", "--units", "u.parquet", "--out", str(tmp_path / "m.json"),
                  "--config", '{"abx": {"slicer": "fastabx"}}'])
    with pytest.raises(ConfigError, match=r"'normalisation': 'median' is not allowed"):
        score_main(["--model", "m", "--units", "u", "--out", "o", "--config", '{"normalisation": "median"}'])
    with pytest.raises((ValueError, OSError), match=r"'fit.max_frames': 0 is out of range"):
        kmeans_main(["fit", "--config", json.dumps({"encoder": {"kind": "mfcc"}, "layer": 0, "quantizer": "kmeans",
                                                    "k": 4, "fit": {"max_frames": 0}}),
                     "--manifest", "m.tsv", "--out", str(tmp_path / "k.npz")])
