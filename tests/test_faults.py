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


# --- issue 23: nothing silently wrong, round 3 ------------------------------------------------------------------
# Each case of the issue is one line of a table below (or, where it needs a run of its own, one test named after it).
BAD_NAMES = ["..", "../../../x", "a/b", "demo-dev", "my corpus", "1st", ""]


@pytest.mark.parametrize("section", ["corpora", "benchmarks", "encoders", "units", "lms", "experiments", "grids"])
@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_case_01_08_entry_names_are_safe_words(section: str, name: str) -> None:
    """Case 1 (names that escape the tree) and case 8 (`demo-dev`, split by the dataset wildcard)."""
    from common.config import ConfigError
    from pipeline.checks import check_names

    check_names({section: {"ok_name2": {}}})
    with pytest.raises(ConfigError, match=rf"'{section}\.{re.escape(name)}': entry name .* is not allowed \(.*\)"):
        check_names({section: {name: {}}})


def default_workflow_config() -> dict:
    import yaml

    return yaml.safe_load((REPO_ROOT / "config.yaml").read_text())


def test_case_01_08_validation_and_schema_refuse_unsafe_names() -> None:
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate as schema_validate

    from common.config import ConfigError
    from pipeline.config import validate

    config = default_workflow_config()
    config["benchmarks"]["demo-dev"] = config["benchmarks"].pop("demo")
    with pytest.raises(ConfigError, match=r"'benchmarks\.demo-dev'.*demo-dev is read as 'demo', 'dev'.*'demo_dev'"):
        validate(config)
    with pytest.raises(WorkflowError, match=r"'demo-dev' does not match"):
        schema_validate(config, str(REPO_ROOT / "workflow/schemas/config.schema.yaml"))
    config = default_workflow_config()
    config["units"]["../../../x"] = config["units"].pop("mfcc_kmeans")
    with pytest.raises(ConfigError, match=r"'units\.\.\./\.\./\.\./x'.*outside the working directory"):
        validate(config)


def test_case_02_symlinked_speaker_folders_are_walked_and_loops_listed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store, corpus = tmp_path / "store", tmp_path / "corpus"
    for spk in range(3):
        for utt in range(2):
            write_wav(store / f"spk{spk}" / f"u{spk}{utt}.wav", speechlike(0.2, rng))
    corpus.mkdir()
    for spk in range(3):
        (corpus / f"spk{spk}").symlink_to(store / f"spk{spk}", target_is_directory=True)
    (store / "spk0" / "loop").symlink_to(corpus, target_is_directory=True)  # a cycle back to the root
    log = io.StringIO()
    table = build_manifest(corpus, tmp_path / "m.tsv", log=log)
    assert len(table) == 6 and sorted(table["speaker"].unique()) == ["spk0", "spk1", "spk2"]
    assert re.search(r"not followed: .*spk0/loop: a folder already walked", log.getvalue()), log.getvalue()


def test_case_03_fingerprint_changes_on_edit_addition_deletion_and_restore(tmp_path: Path) -> None:
    import os

    from data.walk import fingerprint

    rng = np.random.default_rng(0)
    for i in range(3):
        write_wav(tmp_path / "c" / "spk" / f"u{i}.wav", speechlike(0.2, rng))
    (tmp_path / "c" / "notes.txt").write_text("not audio")
    seen = [fingerprint(tmp_path / "c", ("wav",))]
    assert fingerprint(tmp_path / "c", ("wav",)) == seen[0]  # stable
    (tmp_path / "c" / "notes.txt").write_text("other text")  # not audio: no rerun
    assert fingerprint(tmp_path / "c", ("wav",)) == seen[0]
    write_wav(tmp_path / "c" / "spk" / "u1.wav", speechlike(0.3, rng))  # edited
    seen.append(fingerprint(tmp_path / "c", ("wav",)))
    write_wav(tmp_path / "c" / "spk" / "u9.wav", speechlike(0.2, rng))  # added
    seen.append(fingerprint(tmp_path / "c", ("wav",)))
    kept = (tmp_path / "c" / "spk" / "u0.wav").read_bytes()
    (tmp_path / "c" / "spk" / "u0.wav").unlink()  # deleted
    seen.append(fingerprint(tmp_path / "c", ("wav",)))
    (tmp_path / "c" / "spk" / "u0.wav").write_bytes(kept)  # restored
    os.utime(tmp_path / "c" / "spk" / "u0.wav", ns=(1, 1))
    seen.append(fingerprint(tmp_path / "c", ("wav",)))
    assert len(set(seen)) == len(seen), seen
    assert fingerprint(tmp_path / "nothing", ("wav",)) == "missing"


@pytest.mark.slow
def test_case_03_a_corpus_edit_reruns_its_manifest(tmp_path: Path) -> None:
    """The workflow: after a (touched) complete manifest, adding a file plans the manifest again."""
    import yaml

    rng = np.random.default_rng(0)
    for i in range(2):
        write_wav(tmp_path / "mine" / "spk" / f"u{i}.wav", speechlike(0.2, rng))
    config = default_workflow_config()
    config["corpora"]["mine"] = {"source": "directory", "root": str(tmp_path / "mine")}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    target = "resources/corpora/mine/manifest.tsv"
    work = tmp_path / "work"
    (work / target).parent.mkdir(parents=True)
    (work / target).touch()

    def snakemake(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "snakemake", target, "--snakefile", str(REPO_ROOT / "Snakefile"),
                               "--directory", str(work), "--cores", "1", *args, "--configfile",
                               str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout

    snakemake("--touch", "--forceall")
    assert "Nothing to be done" in snakemake("-n")
    write_wav(tmp_path / "mine" / "spk" / "u2.wav", speechlike(0.2, rng))
    assert re.search(r"^manifest\s+1$", snakemake("-n"), re.M)


def abx_case(tmp: Path, keep: float, max_dropped: float = 0.02) -> None:
    """Case 4: the item file's utterances against units cut to `keep` of their frames."""
    from eval.abx import select_items
    from eval.benchmarks import read_item_file

    item = tmp / "triphone.item"
    rows = [f"utt{u} {0.1 * i + 0.05:.2f} {0.1 * i + 0.15:.2f} a b c s{u % 2}\n" for u in range(4) for i in range(9)]
    item.write_text(ITEM_HEADER + "".join(rows))
    select_items(read_item_file(item), {f"utt{u}": int(50 * keep) for u in range(4)}, 50.0, False, max_dropped)


def single_speaker_folder(tmp: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("activated", "bedroom", "café"):
        write_wav(tmp / "prompts" / f"{name}.wav", speechlike(0.2, rng))
    return tmp / "prompts"


def units_with_meta(tmp: Path, **meta: Any) -> Path:
    """A units file whose metadata (vocab_size, frame_rate ...) is set by hand, e.g. by a foreign tool."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": ["u1"], "units": [[1, 2, 3]]})
    values = {"vocab_size": 12, "frame_rate": 50.0, "deduplicated": False, "provenance": {}, **meta}
    pq.write_table(table.replace_schema_metadata({b"textless": json.dumps(values).encode()}), tmp / "u.parquet")
    return tmp / "u.parquet"


def deleted_after_manifest(tmp: Path) -> None:
    """Case 7: a file deleted after the manifest was built, read by extraction."""
    from units.shards import iter_shards

    manifest = manifest_file(tmp)
    table = read_manifest(manifest)
    Path(table["path"][1]).unlink()
    list(iter_shards(table["id"].tolist(), table["path"].tolist(), [(0, [0, 1, 2])], log=io.StringIO()))


def flat_directory_corpus(tmp: Path) -> None:
    """Case 13: the README's directory corpus over one speaker's flat folder, checked at parse time."""
    from pipeline.checks import check_data_layouts

    check_data_layouts({"corpora": {"mine": {"source": "directory", "root": str(single_speaker_folder(tmp))}}})


def nested_abx_ids(tmp: Path) -> None:
    """Case 14: an ABX manifest with path ids (`spk/utt`), checked at parse time."""
    from pipeline.checks import check_data_layouts

    manifest = manifest_file(tmp)
    check_data_layouts({"benchmarks": {"mine": {"source": "paths", "abx_manifest": str(manifest)}}})


def oom(error: BaseException, hint: str | None = None) -> Callable[[Path], None]:
    def fail() -> None:
        raise error

    return lambda tmp: run_main(fail, memory_hint=hint)


def refused_pickle_in_a_library(tmp: Path) -> None:
    """A library's own torch.load(weights_only=True) refusing a pickle reaches run_main."""
    torch.save({"model": Payload(tmp / "code-ran")}, tmp / "evil.bin")
    run_main(lambda: torch.load(tmp / "evil.bin", weights_only=True))


CUDA_OOM = "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.1 GiB of which 1 GiB"
# (case, trigger(tmp): raises, error class, message pattern, text the message must not contain)
ROUND_3: list[tuple[str, Callable[[Path], Any], type, str, str | None]] = [
    ("04 ABX over a remnant of the items", lambda t: abx_case(t, 0.4), Exception,
     r"triphone\.item: 24 of 36 items fall past the end .*allowed: 2%, eval\.abx\.max_dropped.*utt0 \(20 frames",
     None),
    ("07 a file deleted after its manifest", deleted_after_manifest, Exception,
     r"utt1\.wav: file not found \(utterance spk1/utt1\).*restore the file, or rebuild the manifest"
     r".*extraction: \{bad_audio: skip\}", "--bad-audio"),
    ("10 CUDA out of memory", oom(torch.OutOfMemoryError(CUDA_OOM)), SystemExit,
     r"^error: out of memory \(CUDA out of memory\. Tried to allocate 20\.00 GiB\): use less memory", None),
    ("10 out of memory in units.extract", oom(torch.OutOfMemoryError(CUDA_OOM), "UNITS"), SystemExit,
     r"^error: out of memory .*: lower the audio per batch \(--batch-seconds.*--chunk-seconds", None),
    ("10 MemoryError", oom(MemoryError()), SystemExit, r"^error: out of memory \(MemoryError\)", None),
    ("11 units metadata vocab_size 1e12", lambda t: read_units_meta(units_with_meta(t, vocab_size=10 ** 12)),
     UnitsFileError, r"u\.parquet: units metadata vocab_size=1000000000000 is not an integer in \[1, 1048576\]",
     None),
    ("11 units metadata frame_rate 0", lambda t: read_units_meta(units_with_meta(t, frame_rate=0)),
     UnitsFileError, r"u\.parquet: units metadata frame_rate=0 is not a rate", None),
    ("11 unit ids beyond the metadata's vocabulary", lambda t: read_units(units_with_meta(t, vocab_size=3)),
     UnitsFileError, r"u\.parquet: unit ids 1\.\.3 outside \[0, 3\)", None),
    ("12 a pickle refused inside a library", refused_pickle_in_a_library, SystemExit,
     r"^error: a pickle holds Python objects .*refused global .*exec\).*none of its code ran",
     "weights_only=False"),
    ("13 speaker: dir over a flat folder", lambda t: build_manifest(single_speaker_folder(t), t / "m.tsv",
                                                                    log=io.StringIO()), ManifestError,
     r"activated\.wav: lies directly in the corpus folder .*set speaker: single", "--speaker"),
    ("13 ... found at parse time", flat_directory_corpus, Exception,
     r"'corpora\.mine': .*prompts holds audio files directly \(activated\.wav.*'corpora\.mine\.speaker: single'",
     None),
    ("14 ABX manifest ids with '/', at parse time", nested_abx_ids, Exception,
     r"'benchmarks\.mine\.abx_manifest': .*3 utterance id\(s\) hold a '/' \(e\.g\. 'spk0/utt0'\).*\"ids\": \"stem\"",
     None),
]


@pytest.mark.parametrize(("case", "trigger", "error", "pattern", "absent"), ROUND_3, ids=[r[0] for r in ROUND_3])
def test_round_3_case_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture, case: str, trigger,
                                         error: type, pattern: str, absent: str | None) -> None:
    from units.config import MEMORY_HINT

    if case == "10 out of memory in units.extract":
        trigger = oom(torch.OutOfMemoryError(CUDA_OOM), MEMORY_HINT)
    capsys.readouterr()
    with pytest.raises(error) as raised:
        trigger(tmp_path)
    if error is SystemExit:
        assert raised.value.code == 1
        errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, errors
        text = errors[0]
    else:
        from common.cli import error_message

        text = error_message(raised.value)
        assert text is not None, f"{type(raised.value).__name__} is not a project error: it would be a traceback"
    assert re.search(pattern, text), text
    assert absent is None or absent not in text, text
    assert not (tmp_path / "code-ran").exists()


def test_case_04_items_dropped_below_the_share_are_footnoted(tmp_path: Path) -> None:
    abx_case(tmp_path, 1.0)  # whole utterances: nothing dropped
    abx_case(tmp_path, 0.4, max_dropped=0.7)  # allowed explicitly


def test_case_13_single_speaker_corpus(tmp_path: Path) -> None:
    table = build_manifest(single_speaker_folder(tmp_path), tmp_path / "m.tsv", speaker="single", log=io.StringIO())
    assert table["speaker"].unique().tolist() == ["prompts"] and len(table) == 3


def lm_with_units_meta(tmp: Path, units_meta: dict) -> Path:
    out = tmp / "lm"
    write_model_dir(build_model(build_config("tiny", UnitVocab(12)), seed=0), UnitVocab(12), out,
                    {"units_meta": units_meta, "training": {"epochs": 95.0, "train_blocks": 3, "steps": 120}})
    return out


def dedup_units(path: Path, kmeans_sha256: str) -> Path:
    frames = {"config": {"encoder": {"kind": "mfcc"}, "layer": 0, "quantizer": "kmeans", "vocab_size": 12,
                         "kmeans": "results/kmeans/x/kmeans.npz", "kmeans_sha256": kmeans_sha256,
                         "manifest": str(path.parent / "manifest.tsv")}}
    with UnitsWriter(path, vocab_size=12, deduplicated=True, provenance={"config": {}, "source": frames}) as writer:
        for i in range(4):
            writer.write(f"u{i}", np.arange(i, i + 5) % 12, np.ones(5, np.int32))
    return path


def test_case_05_units_of_another_kmeans_are_refused_unless_overridden(tmp_path: Path) -> None:
    from lm.score import ScoreError, score_units_file

    trained = dedup_units(tmp_path / "train.parquet", "aaaa")
    lm = lm_with_units_meta(tmp_path, read_units_meta(trained))
    score_units_file(lm, dedup_units(tmp_path / "same.parquet", "aaaa"), tmp_path / "ok.tsv", device="cpu")
    other = dedup_units(tmp_path / "other.parquet", "bbbb")
    with pytest.raises(ScoreError, match=r"other\.parquet: not the units the LM .* was trained on \(kmeans_sha256: "
                                         r"aaaa \(LM\) vs bbbb \(scored\)\).*--allow-units-mismatch"):
        score_units_file(lm, other, tmp_path / "bad.tsv", device="cpu")
    assert not (tmp_path / "bad.tsv").exists()
    score_units_file(lm, other, tmp_path / "forced.tsv", device="cpu", allow_mismatch=True)
    sidecar = json.loads((tmp_path / "forced.tsv.json").read_text())
    assert "kmeans_sha256: aaaa (LM) vs bbbb (scored)" in sidecar["conventions"]["units_mismatch"]
    # The evaluations copy the sidecar's conventions into every metric: the report's footnotes show the override.
    from eval.results import scoring_conventions

    assert "kmeans_sha256" in scoring_conventions(tmp_path / "forced.tsv", None)["lm_units_mismatch"]


def test_case_09_a_k_mismatch_is_a_named_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lm = tmp_path / "lm"
    write_model_dir(build_model(build_config("tiny", UnitVocab(10)), seed=0), UnitVocab(10), lm, {})
    capsys.readouterr()
    with pytest.raises(SystemExit):
        call("lm.score", ["--model", str(lm), "--units", str(units_file(tmp_path / "u.parquet", dedup=True)),
                          "--out", str(tmp_path / "s.tsv"), "--device", "cpu"])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and re.search(r"u\.parquet: vocab_size 12 differs from the LM's 10 units", errors[0])


def test_case_12_pickled_weights_of_an_hf_encoder_and_an_lm_are_refused_by_name(tmp_path: Path,
                                                                               lm_dir: Path) -> None:
    from lm.score import load_lm
    from tests.units_helpers import make_hf_hubert
    from units.config import EncoderConfigError
    from units.encoders.hf import HFEncoder

    marker = tmp_path / "code-ran"
    hf = make_hf_hubert(tmp_path / "hubert")
    (hf / "model.safetensors").unlink()
    torch.save({"model": Payload(marker)}, hf / "pytorch_model.bin")
    with pytest.raises(EncoderConfigError, match=r"hubert: the model's pickled weights \(\.bin\) hold Python "
                                                 r"objects .*refuses to build \(.*exec\).*safetensors") as err:
        HFEncoder(str(hf))
    assert "weights_only=False" not in str(err.value)
    lm = copy_lm(lm_dir, tmp_path)
    (lm / "model.safetensors").unlink()
    torch.save({"model": Payload(marker)}, lm / "pytorch_model.bin")
    with pytest.raises(ArtefactError, match=r"pytorch_model\.bin: unit-LM weights hold Python objects") as err:
        load_lm(lm, "cpu")
    assert "truncated" not in str(err.value)
    assert not marker.exists()


# Case 6 (and issue 22): an entry point run as `python -m` (its error classes then live in `__main__`) prints one
# `error:` line, no traceback. (name, build(tmp) -> argv after `python -m`, message pattern)
AS_MAIN: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("data.manifest, empty folder", lambda t: ["data.manifest", str(t / "empty"), str(t / "m.tsv")],
     r"empty: no audio files"),
    ("data.manifest, duplicate stems", lambda t: ["data.manifest", str(manifest_file(t).parent / "dup"),
                                                   str(t / "m.tsv"), "--config", '{"ids": "stem"}'],
     r"dup: 1 utterance id\(s\) name several files"),
    ("eval.submission, an empty part", lambda t: ["eval.submission", "--parts", str(t / "empty"), "--out",
                                                  str(t / "sub"), "--config",
                                                  '{"train_set": "x", "description": "d"}'],
     r"empty: part holds no task file"),
]


@pytest.mark.parametrize(("case", "build", "pattern"), AS_MAIN, ids=[r[0] for r in AS_MAIN])
def test_case_06_entry_point_as_main_is_one_line(tmp_path: Path, case: str, build, pattern: str) -> None:
    (tmp_path / "empty").mkdir()
    argv = build(tmp_path)
    if case == "data.manifest, duplicate stems":  # one stem in two speaker folders
        rng = np.random.default_rng(0)
        for spk in ("a", "b"):
            write_wav(Path(argv[1]) / spk / "same.wav", speechlike(0.2, rng))
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    assert re.search(pattern, errors[0]), errors


def test_project_errors_are_recognised_in_main_of_a_project_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from common.cli import is_named_error

    error = type("ManifestError", (ValueError,), {"__module__": "__main__"})("x")
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="data.manifest")
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert is_named_error(error)
    main.__spec__ = types.SimpleNamespace(name="somebody.else")
    assert not is_named_error(error)
    assert not is_named_error(ValueError("a bug keeps its traceback"))


TORCHRUN_DUMP = b"""error: x.tsv: broken on purpose
E1206 12:47:41.310000 13658 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1) local_rank: 0
Traceback (most recent call last):
  File "/venv/bin/torchrun", line 6, in <module>
    sys.exit(main())
  File "/venv/torch/distributed/launcher/api.py", line 386, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
lm.train FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-06_12:47:41
  rank      : 0 (local_rank: 0)
  exitcode  : 3 (pid: 13738)
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""
WORKER_BUG = b"""Traceback (most recent call last):
  File "/x/lm/train.py", line 3, in <module>
KeyError: 'missing'
progress 10%\rprogress 20%
"""


def test_case_15_torchrun_failure_is_the_workers_line_and_one_summary() -> None:
    from common.launch import relay_stderr

    out: list[bytes] = []
    relay_stderr(io.BytesIO(TORCHRUN_DUMP + WORKER_BUG), out.append, "lm.train")
    text = b"".join(out).decode()
    assert text.splitlines()[:2] == ["error: x.tsv: broken on purpose",
                                     "common.launch: lm.train failed on rank 0 (exit code 3); its error is above"]
    assert "ChildFailedError" not in text and "Root Cause" not in text and "api.py" not in text
    assert WORKER_BUG.decode() in text  # a worker's own traceback (a bug) and progress bars pass as they are


@pytest.mark.slow
def test_case_15_torchrun_failure_through_the_launcher(tmp_path: Path) -> None:
    import os

    (tmp_path / "failing_worker.py").write_text(
        "from common.cli import run_main\nfrom data.manifest import ManifestError\n\n\ndef main():\n"
        "    raise ManifestError('x.tsv: broken on purpose')\n\n\nrun_main(main)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO_ROOT}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    proc = subprocess.run([sys.executable, "-m", "common.launch", "failing_worker"], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=300)
    assert proc.returncode == 1
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == ["error: x.tsv: broken on purpose"]


def test_case_16_collapsed_units_and_many_epochs_are_warned_in_log_and_report(tmp_path: Path) -> None:
    from eval.report import build_report
    from lm.score import score_units_file
    from units.dedup import deduplicate

    with UnitsWriter(tmp_path / "f.parquet", vocab_size=256) as writer:  # 4 of 256 units used
        for i in range(6):
            writer.write(f"u{i}", np.arange(30) % 4)
    stats = deduplicate(tmp_path / "f.parquet", tmp_path / "d.parquet", tmp_path / "s.json")
    assert re.search(r"f\.parquet: only 4 of 256 units are used .*collapsed", stats["warnings"][0])
    trained = dedup_units(tmp_path / "train.parquet", "aaaa")
    lm = lm_with_units_meta(tmp_path, read_units_meta(trained))
    score_units_file(lm, trained, tmp_path / "scores.tsv", device="cpu")
    warning = json.loads((tmp_path / "scores.tsv.json").read_text())["warnings"][0]
    assert re.search(r"the LM made 95 passes over its training blocks \(3 blocks\)", warning)
    metrics = write_metrics(tmp_path / "m.json", task="lexical", metrics=[Metric("swuggy_all", 50.0, "%", 3, {})],
                            labels={"units": "u", "lm": "lm"}, inputs={}, config={},
                            details={"warnings": [warning, stats["warnings"][0]]})
    assert metrics["details"]["warnings"]
    table = build_report([tmp_path / "m.json"], tmp_path / "report")
    assert warning in table["notes"] and stats["warnings"][0] in table["notes"]
    assert "95 passes" in (tmp_path / "report" / "table.md").read_text()


def test_case_17_table_md_has_phoneme_abx_columns(tmp_path: Path) -> None:
    from eval.report import build_report

    names = ["abx_triphone_within_speaker", "abx_triphone_across_speaker",
             "abx_phoneme_within_context_within_speaker", "abx_phoneme_within_context_across_speaker"]
    write_metrics(tmp_path / "abx.json", task="abx", metrics=[Metric(n, 5.0 + i, "%", 10, {})
                                                              for i, n in enumerate(names)],
                  labels={"units": "u"}, inputs={}, config={})
    build_report([tmp_path / "abx.json"], tmp_path / "report")
    header = (tmp_path / "report" / "table.md").read_text().splitlines()[2]
    assert "Phoneme ABX within (%)" in header and "Phoneme ABX across (%)" in header


def test_case_18_readme_documents_an_evaluation_set_of_ones_own(tmp_path: Path) -> None:
    """The README's worked example, run as written: alignments -> item files and 100 Hz labels the readers accept."""
    from eval.benchmarks import ITEM_COLUMNS, read_item_file

    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("## Your own evaluation set")
    section = readme[start:readme.index("\n## ", start + 1)]
    for needed in (" ".join(ITEM_COLUMNS), "ids: stem", '"speaker": "single"', "100 Hz", "SIL", "abx_manifest:",
                   "phoneme_item:", "phones:"):
        assert needed in section, needed
    script = section.split("```python\n", 1)[1].split("```", 1)[0]
    rng = np.random.default_rng(0)
    write_wav(tmp_path / "wav" / "hello.wav", speechlike(0.605, rng))  # 60 frames at 100 Hz
    rows = [("SIL", 0.0, 0.1), ("HH", 0.1, 0.2), ("AH", 0.2, 0.3), ("L", 0.3, 0.4), ("OW", 0.4, 0.5), ("", 0.5, 0.605)]
    (tmp_path / "alignments.tsv").write_text("utt\tphone\tonset\toffset\n"
                                             + "".join(f"hello\t{p}\t{a}\t{b}\n" for p, a, b in rows))
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True, timeout=60)
    tri, pho = read_item_file(tmp_path / "triphone.item"), read_item_file(tmp_path / "phoneme.item")
    assert [line.split()[1:4] for line in tri.lines] == [["0.1000", "0.4000", "AH"], ["0.2000", "0.5000", "L"]]
    assert [line.split()[1:4] for line in pho.lines] == [["0.2000", "0.3000", "AH"], ["0.3000", "0.4000", "L"]]
    phones = read_phone_labels(tmp_path / "phones_100hz.jsonl")["hello"]
    assert len(phones) == 60 and phones[:10] == ["SIL"] * 10 and phones[10:20] == ["HH"] * 10
    assert phones[-1] == "SIL"
