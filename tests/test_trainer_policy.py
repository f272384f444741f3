"""The one work-directory policy (common.runtime.Workdir), checked on both trainers alike: a recipe change sets the
old directory aside and starts afresh, a forced rerun of a finished run retrains, an interrupted run resumes (and
records a code change), and a second live trainer of the same directory is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import common.runtime
import lm.train
import spidr.train
from common.runtime import Dist, TrainingInterrupted, Workdir, WorkdirBusy, checkpoint_paths
from spidr.checkpoint import read_checkpoint
from tests.test_lm_train import FAST
from tests.test_lm_train import units as units  # the fixture
from tests.test_spidr_train import TINY
from tests.test_spidr_train import corpus as corpus  # the fixture


class LM:
    """lm.train through the policy's eyes: run (to the end, or interrupted at the first step), weights, lr hook."""

    module = lm.train

    def __init__(self, data: Path) -> None:
        self.data = data

    def run(self, work: Path, out: Path, lr: float = 3e-3, interrupt: bool = False) -> None:
        cfg = lm.train.TrainConfig.from_dict({**FAST, "lr": lr})
        if interrupt:
            with pytest.raises(TrainingInterrupted):
                lm.train.train(self.data, work, out, cfg, stop_after_s=0)
        else:
            lm.train.train(self.data, work, out, cfg)

    def weights(self, out: Path) -> dict[str, torch.Tensor]:
        return load_file(out / "last" / "model.safetensors")

    def patch_schedule(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = lm.train.lr_at
        monkeypatch.setattr(lm.train, "lr_at", lambda step, cfg, total: 0.5 * real(step, cfg, total))


class Spidr:
    module = spidr.train

    def __init__(self, manifest: Path) -> None:
        self.manifest = str(manifest)

    def run(self, work: Path, out: Path, lr: float = 5e-4, interrupt: bool = False) -> None:
        cfg = {**TINY, "optim": {"lr": lr}}
        spidr.train.train(cfg, self.manifest, str(work), str(out), stop_after=2 if interrupt else None)

    def weights(self, out: Path) -> dict[str, torch.Tensor]:
        return read_checkpoint(out)["model"]

    def patch_schedule(self, monkeypatch: pytest.MonkeyPatch) -> None:
        real = spidr.train.lr_at
        monkeypatch.setattr(spidr.train, "lr_at", lambda step, cfg: 0.5 * real(step, cfg))


@pytest.fixture(params=["lm", "spidr"])
def trainer(request, units, corpus):
    return LM(units) if request.param == "lm" else Spidr(corpus)


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _steps(work: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()]


def test_a_recipe_change_sets_the_old_work_directory_aside_and_starts_afresh(trainer, tmp_path, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    trainer.run(work, out, interrupt=True)
    old_checkpoints = [p.name for p in checkpoint_paths(work)]
    trainer.run(work, out, lr=1e-3)  # the DAG rerun after a hyperparameter change: no refusal, a fresh run
    err = capsys.readouterr().err
    aside = sorted(tmp_path.glob("work.set-aside-*"))
    assert len(aside) == 1 and f"the old work directory is kept as {aside[0]}" in err and "lr" in err
    assert [p.name for p in checkpoint_paths(aside[0])] == old_checkpoints  # nothing of the old run is lost
    assert "starting at step 0" in err and _steps(work)[0] == 1
    record = json.loads((work / "config.json").read_text())
    assert record["finished"]["step"] >= 1 and len(record["code_versions"]) == 1


def test_a_forced_rerun_of_a_finished_run_retrains(trainer, tmp_path, monkeypatch, capsys):
    work, out = tmp_path / "work", tmp_path / "out"
    trainer.run(work, out)
    first = trainer.weights(out)
    trainer.patch_schedule(monkeypatch)  # the code changed (here: its learning-rate schedule), the config did not
    trainer.run(work, out)
    assert "a finished run started again (a forced rerun) starts afresh" in capsys.readouterr().err
    assert not _equal(first, trainer.weights(out))  # new code, new weights: never the old model re-emitted
    assert len(list(tmp_path.glob("work.set-aside-*"))) == 1


def test_an_interrupted_run_resumes_and_records_a_code_change(trainer, tmp_path, monkeypatch, capsys):
    trainer.run(tmp_path / "ref", tmp_path / "ref-out")
    work, out = tmp_path / "work", tmp_path / "out"
    trainer.run(work, out, interrupt=True)
    monkeypatch.setattr(common.runtime, "code_version", lambda: "v-next")
    trainer.run(work, out)
    err = capsys.readouterr().err
    assert "resuming under code v-next" in err and "resumed from" in err
    assert not list(tmp_path.glob("work.set-aside-*"))
    assert _equal(trainer.weights(tmp_path / "ref-out"), trainer.weights(out))  # bit for bit (CPU)
    versions = json.loads((work / "config.json").read_text())["code_versions"]
    assert versions[-1]["version"] == "v-next" and len(versions) == 2


def test_a_second_live_trainer_is_refused_naming_the_holder(tmp_path):
    alone = Dist(0, 1, torch.device("cpu"))
    busy = r"w is in use by another live trainer \(host .*, pid \d+\)"
    second = Workdir(tmp_path / "w", {"recipe": {}}, alone)
    with Workdir(tmp_path / "w", {"recipe": {}}, alone), pytest.raises(WorkdirBusy, match=busy):
        second.__enter__()
    with Workdir(tmp_path / "w", {"recipe": {}}, alone):  # released when the first one ended
        pass
