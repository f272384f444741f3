"""Fault injection, table-driven: truncated artefacts, malicious pickles, corrupt benchmark files and disk errors must
each end in one clear error naming the file, never a raw traceback, a silently wrong result or a leftover tmp file.

A new artefact type, torch.load site, benchmark reader or entry point is covered by adding one line to its table.
"""

from __future__ import annotations

import ast
import errno
import io
import json
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from common.artefacts import ArtefactError, load_torch
from common.cli import describe_os_error, run_main
from common.io import REPO_ROOT, atomic_write
from common.runtime import load_checkpoint
from data.audio import write_wav
from data.manifest import ManifestError, build_manifest, read_manifest
from eval.abx import feature_lengths, load_features
from eval.benchmarks import (
    BenchmarkLayoutError,
    read_item_file,
    read_lexical_gold,
    read_phone_labels,
    read_storycloze,
    read_syntactic_gold,
)
from eval.results import Metric, MetricsFileError, read_metrics, write_metrics
from lm.model import UnitVocab, build_config, build_model
from lm.score import load_lm
from lm.train import write_model_dir
from spidr.checkpoint import CheckpointError, atomic_torch_save, load_model, read_checkpoint
from tests.test_eval_slm21 import lexical_case, syntactic_rows
from tests.units_helpers import make_spidr, speechlike
from units.format import UnitsFileError, UnitsWriter, read_units, read_units_meta
from units.kmeans import KMeansError, KMeansModel

UNITS_REMEDY = r"delete it and rerun"


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny unit LM directory as lm.train writes it (12 units)."""
    out = tmp_path_factory.mktemp("lm") / "model"
    write_model_dir(build_model(build_config("tiny", UnitVocab(12)), seed=0), UnitVocab(12), out, {"test": True})
    return out


def units_file(path: Path, dedup: bool = False) -> Path:
    with UnitsWriter(path, vocab_size=12, deduplicated=dedup) as writer:
        for i in range(40):
            units = np.arange(i, i + 30) % 12
            writer.write(f"utt{i:02d}", units, np.ones(len(units), np.int32) if dedup else None)
    return path


def manifest_file(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for i in range(3):
        write_wav(root / "wav" / f"spk{i}" / f"utt{i}.wav", speechlike(0.2, rng))
    build_manifest(root / "wav", root / "manifest.tsv", log=io.StringIO())
    return root / "manifest.tsv"


def metrics_file(path: Path) -> Path:
    write_metrics(path, task="t", metrics=[Metric("m", 1.0, "%", 3, {})], labels={}, inputs={}, config={})
    return path


def copy_lm(lm_dir: Path, tmp: Path) -> Path:
    import shutil

    return Path(shutil.copytree(lm_dir, tmp / "lm"))


# --- truncated artefacts ------------------------------------------------------------------------------------------
# (name, build(tmp) -> the artefact file, load(file), bytes kept (fraction, or negative: all but that many),
#  expected error, message pattern). The file is cut as a killed writer without atomic_write would leave it.
TRUNCATED: list[tuple[str, Callable[[Path], Path], Callable[[Path], Any], float, type, str]] = [
    ("units parquet", lambda t: units_file(t / "u.parquet"), read_units, 0.5, UnitsFileError,
     r"u\.parquet: .*truncated or corrupt.*" + UNITS_REMEDY),
    ("units parquet (streamed)", lambda t: units_file(t / "u.parquet"), read_units_meta, 0.9, UnitsFileError,
     r"u\.parquet: .*truncated or corrupt"),
    ("k-means npz", lambda t: KMeansModel(np.ones((4, 3), np.float32), {"k": 4}).save(t / "k.npz") or t / "k.npz",
     KMeansModel.load, 0.5, KMeansError, r"k\.npz: k-means file is truncated or corrupt.*delete it and rerun"),
    ("SpidR checkpoint.pt", lambda t: make_spidr(t / "c.pt"), load_model, 0.5, CheckpointError,
     r"c\.pt: checkpoint is truncated or corrupt.*delete it and rerun"),
    ("LM checkpoint.pt", lambda t: atomic_torch_save({"step": 3, "model": {"w": torch.ones(64)}}, t / "checkpoint.pt")
     or t / "checkpoint.pt", load_checkpoint, 0.5, ArtefactError, r"checkpoint\.pt: training checkpoint is truncated"),
    ("LM model.safetensors", None, load_lm, 0.5, ArtefactError,  # built from the lm_dir fixture, see below
     r"model\.safetensors: unit-LM file is truncated or corrupt.*rerun the rule that trains it"),
    ("LM unit_vocab.json", None, load_lm, -3, ArtefactError, r"unit_vocab\.json: unit vocabulary is truncated"),
    ("manifest TSV", manifest_file, read_manifest, -3, ManifestError,
     r"manifest\.tsv: .*truncated.*delete it and rerun"),
    ("metrics JSON", lambda t: metrics_file(t / "m.json"), read_metrics, 0.5, MetricsFileError, r"m\.json: not JSON"),
    ("features .pt", lambda t: torch.save(torch.ones(50, 8), t / "u.pt") or t / "u.pt", load_features, 0.5,
     ArtefactError, r"u\.pt: features file is truncated or corrupt"),
]


@pytest.mark.parametrize(("name", "build", "load", "keep", "error", "pattern"), TRUNCATED,
                         ids=[row[0] for row in TRUNCATED])
def test_truncated_artefact_is_named(tmp_path: Path, lm_dir: Path, name: str, build, load, keep: float,
                                     error: type, pattern: str) -> None:
    if build is None:  # the LM directory's files: the loader takes the directory
        directory = copy_lm(lm_dir, tmp_path)
        path, target = directory / name.split()[-1], directory
    else:
        path = build(tmp_path)
        target = path
    load(target)  # intact, it loads
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:int(keep)])
    with pytest.raises(error, match=pattern):
        load(target)


# --- malicious pickles ----------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs code: it creates the marker file (what an attacker's checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


# Every torch.load site of the code, each through the function that wraps it (test_every_torch_load_is_listed).
TORCH_LOAD_SITES: list[tuple[str, Callable[[Path], Any], type]] = [
    ("common.artefacts.load_torch", lambda p: load_torch(p, what="file", remedy="x"), ArtefactError),
    ("common.runtime.load_checkpoint (lm.train, spidr.train)", load_checkpoint, ArtefactError),
    ("spidr.checkpoint.read_checkpoint", read_checkpoint, CheckpointError),
    ("spidr.checkpoint.load_model", load_model, CheckpointError),
    ("eval.abx.load_features", load_features, ArtefactError),
    ("eval.abx.feature_lengths", lambda p: feature_lengths({"u": p}, {"u"}), ArtefactError),
]


@pytest.mark.parametrize(("site", "load", "error"), TORCH_LOAD_SITES, ids=[row[0] for row in TORCH_LOAD_SITES])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, site: str, load, error: type) -> None:
    marker = tmp_path / "code-ran"
    Payload(marker).__reduce__()[0](*Payload(marker).__reduce__()[1])  # the payload works when run ...
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "evil.pt"
    torch.save({"model": Payload(marker)}, path)
    with pytest.raises(error, match=r"evil\.pt: .*refuses to build, so it was not loaded and none of its code ran"):
        load(path)
    assert not marker.exists()  # ... and never when loaded


def test_every_torch_load_goes_through_load_torch() -> None:
    """torch.load is called in one place (load_torch, weights_only=True); a new site must use it (and be listed
    in TORCH_LOAD_SITES), so that a malicious or truncated file can never reach a raw torch.load."""
    calls = []
    for package in ("common", "data", "units", "spidr", "lm", "eval", "benchmarks"):
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                        and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
                    safe = any(k.arg == "weights_only" and getattr(k.value, "value", None) is True
                               for k in node.keywords)
                    calls.append((path.relative_to(REPO_ROOT).as_posix(), node.lineno, safe))
    assert calls, "no torch.load found: the scan is broken"
    assert all(safe for *_, safe in calls), f"torch.load without weights_only=True: {calls}"
    pipeline = {path for path, *_ in calls if not path.startswith("benchmarks/")}  # benchmarks: dev scripts
    assert pipeline == {"common/artefacts.py"}, f"torch.load outside load_torch: {calls}"


# --- corrupt benchmark files ------------------------------------------------------------------------------------
def lexical_gold(tmp: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    gold, _ = lexical_case(tmp)
    change(pd.read_csv(gold)).to_csv(gold, index=False)
    return gold


def syntactic_gold(tmp: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    rows, _ = syntactic_rows()
    gold = tmp / "syntactic" / "dev" / "gold.csv"
    gold.parent.mkdir(parents=True)
    change(pd.DataFrame(rows)).to_csv(gold, index=False)
    return gold


def text_file(name: str, text: str) -> Callable[[Path], Path]:
    def build(tmp: Path) -> Path:
        (tmp / name).write_text(text)
        return tmp / name
    return build


def wav_folder(folder: Path, stems: list[str]) -> Path:
    folder.mkdir()
    for stem in stems:
        (folder / f"{stem}.wav").touch()
    return folder


ITEM_HEADER = "#file onset offset #phone prev-phone next-phone speaker\n"
# (name, build(tmp) -> file or folder, reader, message pattern)
BAD_BENCHMARK_FILES: list[tuple[str, Callable[[Path], Path], Callable[[Path], Any], str]] = [
    ("lexical gold without 'correct'", lambda t: lexical_gold(t, lambda g: g.drop(columns="correct")),
     read_lexical_gold, r"gold\.csv: missing column\(s\) \['correct'\]"),
    ("lexical gold, non-word in another id", lambda t: lexical_gold(
        t, lambda g: g.assign(id=g["id"].where(g["filename"] != "n0", 2))),
     read_lexical_gold, r"gold\.csv: .*break the sWUGGY pairing rule"),
    ("lexical gold, non-word marked correct", lambda t: lexical_gold(
        t, lambda g: g.assign(correct=g["correct"].where(g["filename"] != "n3", 1))),
     read_lexical_gold, r"gold\.csv: .*id 1 voice v2: 2 word\(s\) and 0 non-word\(s\)"),
    ("lexical gold, correct = 2", lambda t: lexical_gold(t, lambda g: g.assign(correct=2)),
     read_lexical_gold, r"gold\.csv: 'correct' must be 0 or 1"),
    ("syntactic gold without 'subtype'", lambda t: syntactic_gold(t, lambda g: g.drop(columns="subtype")),
     lambda p: read_syntactic_gold(p, check_wavs=False), r"gold\.csv: missing column\(s\) \['subtype'\]"),
    ("syntactic gold, duplicate file", lambda t: syntactic_gold(t, lambda g: g.assign(filename="same")),
     lambda p: read_syntactic_gold(p, check_wavs=False), r"gold\.csv: duplicate filename"),
    ("gold.csv cut inside a quoted cell", text_file("gold.csv", 'filename,id,voice\n"x,1,v\n'),
     read_lexical_gold, r"gold\.csv: (not a CSV file|missing column)"),
    ("item file, bad header", text_file("a.item", "#file onset offset\n"), read_item_file, r"a\.item: header is"),
    ("item file, short line", text_file("a.item", ITEM_HEADER + "u1 0.1 0.2 AH\n"), read_item_file,
     r"a\.item: line 2 has 4 columns"),
    ("item file, onset not a number", text_file("a.item", ITEM_HEADER + "u1 x 0.2 AH B C s1\n"), read_item_file,
     r"a\.item: line 2: onset/offset are not numbers"),
    ("item file, onset after offset", text_file("a.item", ITEM_HEADER + "u1 0.3 0.2 AH B C s1\n"), read_item_file,
     r"a\.item: line 2: onset 0\.3 is not before offset 0\.2"),
    ("phone labels, cut JSON line", text_file("p.jsonl", '{"id": "u1", "phones": ["a"]}\n{"id": "u2", "ph'),
     read_phone_labels, r"p\.jsonl: line 2 is not JSON"),
    ("storycloze, unpaired file", lambda t: wav_folder(t / "sc", ["0_s_correct", "1_s_correct"]), read_storycloze,
     r"sc/0_s_correct\.wav: pair 0 is"),
]


@pytest.mark.parametrize(("name", "build", "read", "pattern"), BAD_BENCHMARK_FILES,
                         ids=[row[0] for row in BAD_BENCHMARK_FILES])
def test_corrupt_benchmark_file_is_named(tmp_path: Path, name: str, build, read, pattern: str) -> None:
    path = build(tmp_path)
    with pytest.raises(BenchmarkLayoutError, match=pattern):
        read(path)


# --- disk and permission errors through the entry points ------------------------------------------------------
def slm21_case(tmp: Path) -> tuple[str, list[str]]:
    gold, tsv = lexical_case(tmp)
    return "eval.slm21", ["lexical", "--gold", str(gold), "--scores", str(tsv), "--out", "{out}"]


def manifest_case(tmp: Path) -> tuple[str, list[str]]:
    manifest = manifest_file(tmp)
    return "data.manifest", [str(manifest.parent / "wav"), "{out}"]


def dedup_case(tmp: Path) -> tuple[str, list[str]]:
    return "units.dedup", [str(units_file(tmp / "frames.parquet")), "{out}", "--stats", str(tmp / "stats.json")]


def text_units_case(tmp: Path) -> tuple[str, list[str]]:
    return "units.extract", ["text", str(units_file(tmp / "frames.parquet")), "{out}"]


def score_case(tmp: Path) -> tuple[str, list[str]]:
    lm = tmp / "lm"
    write_model_dir(build_model(build_config("tiny", UnitVocab(12)), seed=0), UnitVocab(12), lm, {})
    return "lm.score", ["--model", str(lm), "--units", str(units_file(tmp / "d.parquet", dedup=True)),
                        "--out", "{out}"]


# (entry point, build(tmp) -> (module, argv with "{out}" for the output path), output name)
ENTRY_POINTS: list[tuple[str, Callable[[Path], tuple[str, list[str]]], str]] = [
    ("data.manifest", manifest_case, "manifest.tsv"),
    ("eval.slm21", slm21_case, "metrics.json"),
    ("units.dedup", dedup_case, "dedup.parquet"),
    ("units.extract text", text_units_case, "units.txt"),
    ("lm.score", score_case, "scores.tsv"),
]


def parent_is_a_file(tmp: Path, name: str) -> tuple[Path, str]:
    (tmp / "blocker").write_text("a file where a folder should be")
    return tmp / "blocker" / name, r"blocker: is a file, not a directory"


def permission_denied(tmp: Path, name: str) -> tuple[Path, str]:
    # sysfs refuses new entries even to root, so this fault is real on any Linux machine, without privileges.
    return Path("/sys/textless-faults") / name, r"/sys/textless-faults: (permission denied|operation not permitted)"


FS_FAULTS = {"parent is a file": parent_is_a_file, "permission denied": permission_denied}


def call(module: str, argv: list[str]) -> None:
    import importlib

    run_main(lambda: importlib.import_module(module).main(argv))


@pytest.mark.parametrize("fault", sorted(FS_FAULTS))
@pytest.mark.parametrize(("entry", "case", "name"), ENTRY_POINTS, ids=[row[0] for row in ENTRY_POINTS])
def test_filesystem_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, fault: str, entry: str,
                                      case, name: str) -> None:
    if fault == "permission denied" and not Path("/sys").is_dir():
        pytest.skip("needs Linux sysfs")
    module, argv = case(tmp_path)
    out, pattern = FS_FAULTS[fault](tmp_path, name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        call(module, [a.replace("{out}", str(out)) for a in argv])
    assert exit_.value.code == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), errors
    assert not list(tmp_path.rglob(".*.tmp"))


def limit_file_size() -> None:
    """In the child: a 64-byte file size limit, and EFBIG instead of SIGXFSZ (whose default action kills)."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


TORCH_SAVE = ("import sys, torch; from common.cli import run_main; from spidr.checkpoint import atomic_torch_save; "
              "run_main(lambda: atomic_torch_save({'w': torch.ones(1000)}, sys.argv[1]))")


# A subprocess each (the file size limit must not hit pytest); lm.score's writer is the same atomic_write path as
# the others and its imports cost seconds, so it is covered in-process above only.
FULL_DISK = [*(row for row in ENTRY_POINTS if row[0] != "lm.score"),
             ("torch.save (checkpoints, features)", lambda t: ("-c", [TORCH_SAVE, "{out}"]), "c.pt")]


@pytest.mark.parametrize(("entry", "case", "name"), FULL_DISK, ids=[row[0] for row in FULL_DISK])
def test_full_disk_is_one_line_and_leaves_no_tmp(tmp_path: Path, entry: str, case, name: str) -> None:
    module, argv = case(tmp_path)
    out = tmp_path / "out" / name
    cmd = [sys.executable, *(["-c"] if module == "-c" else ["-m", module])]
    cmd += [a.replace("{out}", str(out)) for a in argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, preexec_fn=limit_file_size,
                          timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    assert re.search(re.escape(str(out)) + r".*: .*(file too large|torch\.save could not write)", errors[0]), errors
    assert not out.exists() and not [p.name for p in out.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(("err", "line"), [
    (OSError(errno.EROFS, "Read-only file system", "/data/out.json"), "/data/out.json: read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.pt"), "/data/x.pt: no space left on device"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/data/x.pt"), "/data/x.pt: disk quota exceeded"),
    (PermissionError(errno.EACCES, "Permission denied", "/data"), "/data: permission denied"),
    (OSError(errno.EIO, "Input/output error", "/data/a", None, "/data/b"), "/data/a -> /data/b: Input/output error"),
])
def test_os_error_causes_read_as_one_line(err: OSError, line: str) -> None:
    text = describe_os_error(err)
    assert text.startswith(line) and "\n" not in text


def test_bugs_keep_their_traceback_and_named_errors_their_exit_code() -> None:
    with pytest.raises(KeyError):
        run_main(lambda: {}["missing"])

    class Stopped(ManifestError):  # any project error; the trainers' stops carry their own exit code
        exit_code = 3

    def stop() -> None:
        raise Stopped("stopped")

    with pytest.raises(SystemExit) as exit_:
        run_main(stop)
    assert exit_.value.code == 3


def test_failed_atomic_write_names_the_final_path(tmp_path: Path) -> None:
    """An error about the temporary file is reported for the path the user asked for, and the tmp is gone."""
    with pytest.raises(OSError) as err, atomic_write(tmp_path / "m.json") as tmp:
        tmp.write_text("part of it")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(tmp_path / "m.json"))
    assert not list(tmp_path.iterdir())


def test_metrics_json_of_another_kind_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(MetricsFileError, match=r"m\.json: not a metrics file"):
        read_metrics(tmp_path / "m.json")
