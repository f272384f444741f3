"""eval.submission: the merged ZeroSpeech sLM21 folder (layout, byte-identical copies, duplicates, bad lines) and,
slow, the official zerospeech-benchmarks validation and scoring of one built from the demo's gold (.venv-zrc)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from common.config import ConfigError, loads
from eval.config import Experiment
from eval.submission import SubmissionError, SubmissionJob, main, merge
from units.config import UnitsConfig

REPO = Path(__file__).resolve().parent.parent
ZRC_VENV = REPO / ".venv-zrc"


def job(**overrides) -> SubmissionJob:
    units = loads(UnitsConfig, json.dumps({"encoder": {"kind": "mfcc"}, "layer": 0, "quantizer": "kmeans", "k": 16,
                                           "fit": {"corpus": "demo"}, "name": "mfcc_k16", "encoder_name": "mfcc"}))
    values = {"train_set": "unit LM trained on corpus demo",
              "experiment": Experiment(units=units, name="mfcc_k16_tiny", lm="tiny"), **overrides}
    return SubmissionJob(**values)


def write_part(root: Path, task: str, split: str, names: list[str], seed: int) -> Path:
    scores = np.random.default_rng(seed).normal(size=len(names))
    path = root / task / f"{split}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{n} {float(s)!r}\n" for n, s in zip(names, scores, strict=True)))
    return root


@pytest.fixture
def parts(tmp_path: Path) -> list[Path]:
    """Per-task parts as the workflow lays them out: one folder per benchmark (set) and task."""
    out = []
    for k, (split, task) in enumerate([(s, t) for s in ("dev", "test") for t in ("lexical", "syntactic")]):
        part = tmp_path / f"{split}-bench" / f"submission-{task}"
        write_part(part, task, split, [f"{task[:3]}{split}{i:02d}" for i in range(6)], seed=k)
        (part / ".snakemake_timestamp").write_text("")  # what Snakemake leaves in a directory() output
        out.append(part)
    return out


def test_layout_and_files_identical_to_the_parts(tmp_path: Path, parts: list[Path]) -> None:
    out = tmp_path / "submission"
    summary = merge(parts, out, job())
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["lexical/dev.txt", "lexical/test.txt", "meta.yaml", "params.yaml", "syntactic/dev.txt",
                     "syntactic/test.txt"]
    assert summary["tasks"] == ["lexical/dev", "lexical/test", "syntactic/dev", "syntactic/test"]
    for part in parts:
        for src in part.glob("*/*.txt"):
            assert (out / src.relative_to(part)).read_bytes() == src.read_bytes()
    meta = yaml.safe_load((out / "meta.yaml").read_text())
    assert meta["benchmark_name"] == "sLM21"
    assert meta["model_info"]["model_id"] == "mfcc_k16_tiny"
    assert meta["model_info"]["system_description"].startswith("unit LM tiny on kmeans K=16 units of mfcc (mfcc) "
                                                                "layer 0; textless-slm ")
    assert meta["model_info"]["system_description"].endswith(summary["code_version"])
    assert meta["model_info"]["train_set"] == "unit LM trained on corpus demo"
    assert meta["publication"]["authors"] == "textless-slm contributors"
    assert meta["open_source"] is True and meta["username"] is None
    params = yaml.safe_load((out / "params.yaml").read_text())
    assert params == {"quiet": False, "semantic": {"metric": "euclidean", "pooling": "mean", "n_jobs": 1,
                                                   "synthetic": True, "librispeech": True}}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_rerun_replaces_the_folder(tmp_path: Path, parts: list[Path]) -> None:
    out = tmp_path / "submission"
    merge(parts, out, job())
    (out / "stale.txt").write_text("from an earlier run")
    merge(parts[:2], out, job(model_id="renamed"))
    assert sorted(p.name for p in out.iterdir()) == ["lexical", "meta.yaml", "params.yaml", "syntactic"]
    assert sorted(p.name for p in (out / "lexical").iterdir()) == ["dev.txt"]
    assert yaml.safe_load((out / "meta.yaml").read_text())["model_info"]["model_id"] == "renamed"


def test_the_same_task_and_set_twice_names_both_parts(tmp_path: Path, parts: list[Path]) -> None:
    again = write_part(tmp_path / "other-bench" / "submission-lexical", "lexical", "dev", ["x"], seed=9)
    with pytest.raises(SubmissionError, match=f"lexical/dev is in two parts: {parts[0]} and {again}"):
        merge([*parts, again], tmp_path / "submission", job())
    assert not (tmp_path / "submission").exists()


def test_bad_entries_and_lines_are_named(tmp_path: Path, parts: list[Path]) -> None:
    (parts[0] / "lexical" / "valid.txt").write_text("a 1.0\n")
    with pytest.raises(SubmissionError, match=r"lexical/valid\.txt: unexpected entry \(expected dev.txt or test.txt"):
        merge(parts, tmp_path / "submission", job())
    (parts[0] / "lexical" / "valid.txt").unlink()
    lines = (parts[1] / "syntactic" / "dev.txt").read_text().splitlines()
    (parts[1] / "syntactic" / "dev.txt").write_text("\n".join([lines[0], "synname nan-ish", *lines[2:]]) + "\n")
    with pytest.raises(SubmissionError, match=r"syntactic/dev\.txt:2: score 'nan-ish' is not a number"):
        merge(parts, tmp_path / "submission", job())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SubmissionError, match="part holds no task file"):
        merge([empty], tmp_path / "submission", job())


def test_semantic_part_and_its_file_type(tmp_path: Path, parts: list[Path]) -> None:
    sem = tmp_path / "sem"
    for kind in ("synthetic", "librispeech"):
        (sem / "semantic" / "dev" / kind).mkdir(parents=True)
        np.savetxt(sem / "semantic" / "dev" / kind / "a.txt", np.zeros((2, 3)))
    out = tmp_path / "submission"
    merge([*parts, sem], out, job())
    copied = "semantic/dev/librispeech/a.txt"
    assert (out / copied).read_bytes() == (sem / copied).read_bytes()
    # zrc reads the embeddings' type from syntactic.score_files_type (default .npy)
    assert yaml.safe_load((out / "params.yaml").read_text())["syntactic"] == {"score_files_type": ".txt"}


def test_cli_and_config_errors(tmp_path: Path, parts: list[Path], capsys: pytest.CaptureFixture) -> None:
    config = {"train_set": "demo", "model_id": "m", "description": "a hand-made system",
              "meta": {"authors": "A. Author", "institution": "Somewhere", "publication_year": 2025}}
    main(["--parts", *map(str, parts), "--out", str(tmp_path / "s"), "--config", json.dumps(config)])
    meta = yaml.safe_load((tmp_path / "s" / "meta.yaml").read_text())
    assert meta["publication"]["publication_year"] == 2025 and meta["publication"]["authors"] == "A. Author"
    assert "lexical/dev, lexical/test, syntactic/dev, syntactic/test" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="'train_set' must not be empty"):
        loads(SubmissionJob, json.dumps({**config, "train_set": " "}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['meta.affiliation'\]"):
        loads(SubmissionJob, json.dumps({**config, "meta": {"affiliation": "x"}}))


# --- the official package -------------------------------------------------------------------------------------


def require_zrc_venv() -> None:
    """Skip without .venv-zrc, except under `make test` (TEXTLESS_STRICT=1), which builds it: there it fails."""
    if not (ZRC_VENV / ".installed").is_file():
        message = ".venv-zrc is missing (scripts/setup_zrc_venv.sh; make test builds it)"
        if os.environ.get("TEXTLESS_STRICT") == "1":
            pytest.fail(message)
        pytest.skip(message)


def zrc(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "scripts/zrc_validate.sh"), *map(str, args)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "HOME": os.environ.get("HOME", "/tmp")})


@pytest.mark.slow
def test_official_validation_and_scores(tmp_path: Path, demo_corpus: Path) -> None:
    """zrc validates a merged folder built from the demo's dev and test gold, and scores it as eval.slm21 does."""
    require_zrc_venv()
    from eval.benchmarks import read_lexical_gold, read_syntactic_gold
    from eval.slm21 import score_lexical, score_syntactic, write_submission

    root = demo_corpus / "sLM21"
    rng = np.random.default_rng(0)
    parts, ours = [], {}
    for split in ("dev", "test"):
        for task, reader in (("lexical", read_lexical_gold), ("syntactic", read_syntactic_gold)):
            gold = reader(root / task / split / "gold.csv")
            # scores with ties on purpose (zrc counts a tie as 0.5, as we do)
            scores = pd.Series(rng.integers(0, 3, len(gold)).astype(float), index=gold["filename"].to_numpy())
            part = tmp_path / "parts" / f"{split}-{task}"
            write_submission(part, task, split, gold, scores)
            parts.append(part)
            res = score_lexical(gold, scores) if task == "lexical" else score_syntactic(gold, scores)
            ours[(split, task)] = 100 * (res.all if task == "lexical" else res.pairs)
    out = tmp_path / "submission"
    merge(parts, out, job())
    done = zrc(out, root, "--score")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["valid"] and result["errors"] == [] and result["sets"] == ["dev", "test"]
    assert result["packages"]["zerospeech-benchmarks"] == "0.9.4"
    for split in ("dev", "test"):
        assert result["zrc"][split]["swuggy_all"] == pytest.approx(ours[(split, "lexical")], abs=1e-9)
        assert result["zrc"][split]["sblimp"] == pytest.approx(ours[(split, "syntactic")], abs=1e-9)
    # zrc ran on a copy: no params.yaml rewrite, no scores/ in our folder
    assert sorted(p.name for p in out.iterdir()) == ["lexical", "meta.yaml", "params.yaml", "syntactic"]

    # a file missing one wav of the benchmark, and a meta.yaml without authors: zrc reports both
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    lines = (broken / "lexical/test.txt").read_text().splitlines(keepends=True)
    (broken / "lexical/test.txt").write_text("".join(lines[1:]))
    meta = yaml.safe_load((broken / "meta.yaml").read_text())
    meta["publication"]["authors"] = ""
    (broken / "meta.yaml").write_text(yaml.safe_dump(meta))
    done = zrc(broken, root)
    assert done.returncode == 1
    errors = json.loads(done.stdout)["errors"]
    assert any("publication.authors" in e for e in errors), errors
    assert any("lexical_test" in e and "expected file not found" in e for e in errors), errors
