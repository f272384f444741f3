"""eval.storycloze: pairing by file name, tie rule, stated normalisation, layout errors; demo layouts read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval.benchmarks import BenchmarkLayoutError, read_item_file, read_phone_labels, read_storycloze
from eval.storycloze import main


def story_dir(root: Path, names: list[str]) -> Path:
    folder = root / "sSC"
    folder.mkdir(parents=True)
    for name in names:
        (folder / f"{name}.wav").touch()
    return folder


NAMES = ["0_s0_correct", "1_s0_incorrect", "2_s1_correct", "3_s1_incorrect", "10_s5_correct", "11_s5_incorrect",
         "4_s2_correct", "5_s2_incorrect", "6_s3_correct", "7_s3_incorrect", "8_s4_correct", "9_s4_incorrect"]


def test_accuracy_ties_and_conventions(tmp_path: Path) -> None:
    folder = story_dir(tmp_path, NAMES)
    pairs = read_storycloze(folder)
    assert pairs["story"].tolist() == ["s0", "s1", "s2", "s3", "s4", "s5"]  # numeric, not lexicographic, order
    # pairs: right, right, tie, wrong, right, wrong -> (1 + 1 + .5 + 0 + 1 + 0) / 6
    scores = {"0_s0_correct": -1, "1_s0_incorrect": -2, "2_s1_correct": -1, "3_s1_incorrect": -1.5,
              "4_s2_correct": -3, "5_s2_incorrect": -3, "6_s3_correct": -4, "7_s3_incorrect": -1,
              "8_s4_correct": -1, "9_s4_incorrect": -9, "10_s5_correct": -5, "11_s5_incorrect": -2}
    tsv = tmp_path / "scores.tsv"
    tsv.write_text("".join(f"{k}\t{v}\n" for k, v in scores.items()))
    job = {"normalisation": "mean", "experiment": {"name": "e", "lm": "tiny", "units": {
        "encoder": {"kind": "mfcc"}, "layer": 0, "quantizer": "kmeans", "k": 8, "fit": {}, "name": "u",
        "encoder_name": "mfcc"}}}
    main(["--dir", str(folder), "--scores", str(tsv), "--out", str(tmp_path / "m.json"), "--config", json.dumps(job)])
    doc = json.loads((tmp_path / "m.json").read_text())
    (m,) = doc["metrics"]
    assert m["metric"] == "ssc" and m["value"] == pytest.approx(100 * 3.5 / 6) and m["n"] == 6
    assert m["conventions"]["normalisation"] == "mean log-likelihood of the whole story"
    assert doc["details"]["ties"] == 1 and doc["task"] == "sSC"
    assert doc["labels"] == {"experiment": "e", "lm": "tiny", "units": "u", "encoder": "mfcc", "encoder_kind": "mfcc",
                             "layer": 0, "quantizer": "kmeans", "k": 8, "set": None, "seed": None, "kmeans_seed": None}


@pytest.mark.parametrize(("names", "problem"), [
    (["0_s0_correct", "1_s0_incorrect", "3_s1_incorrect", "2_s1_correctish"], "does not match"),
    (["0_s0_correct", "1_s0_incorrect", "3_s1_incorrect", "4_s1_correct"], "without gaps"),
    (["0_s0_incorrect", "1_s0_correct"], "expected <0>_<story>_correct"),
    (["0_s0_correct", "1_s9_incorrect"], "same story"),
    ([], "no .wav file"),
])
def test_layout_errors_name_path_and_layout(tmp_path: Path, names: list[str], problem: str) -> None:
    folder = story_dir(tmp_path, names)
    with pytest.raises(BenchmarkLayoutError, match=problem) as err:
        read_storycloze(folder)
    assert str(folder) in str(err.value) and "expected layout: SpokenStoryCloze" in str(err.value)


def test_missing_scores_are_an_error(tmp_path: Path) -> None:
    folder = story_dir(tmp_path, NAMES[:2])
    tsv = tmp_path / "scores.tsv"
    tsv.write_text("0_s0_correct\t-1\n")
    with pytest.raises((ValueError, OSError), match=r"no score for 1 of 2 story files.*1_s0_incorrect"):
        main(["--dir", str(folder), "--scores", str(tsv), "--out", str(tmp_path / "m.json"), "--config",
              '{"normalisation": "sum"}'])


def test_demo_layouts_read(demo_corpus: Path) -> None:
    for task in ("sSC", "tSC"):
        pairs = read_storycloze(demo_corpus / "storycloze" / task)
        assert len(pairs) >= 1 and pairs["pair"].tolist() == list(range(len(pairs)))
    for kind in ("triphone", "phoneme"):
        items = read_item_file(demo_corpus / "dev" / f"{kind}.item")
        assert len(items) > 0
    labels = read_phone_labels(demo_corpus / "dev" / "phones_100hz.jsonl")
    assert set(items.files) <= set(labels) and "SIL" in next(iter(labels.values()))
