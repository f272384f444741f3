"""eval.slm21: the ZeroSpeech 2021 aggregation rules on hand-built gold files, and the zrc submission format."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from eval.benchmarks import BenchmarkLayoutError, read_lexical_gold, read_syntactic_gold
from eval.results import ScoresFileError, read_scores, scoring_conventions
from eval.slm21 import main, score_lexical, score_syntactic

# (id, voice, frequency, score word, score non-word). Per id, mean over voices:
# id 0 oov: 1, tie -> .75 | id 1 freq 3 ("1-5"): 1, 0 -> .5 | id 2 freq 50 ("21-100"): 1, 1 -> 1
# id 3 freq 5 (official bins are left-closed: [5, 20) is labelled "6-20"): 0 -> 0 (one voice only)
# id 4 freq 100 (">100" = [100, inf)): 1, 1, 0 -> 2/3
LEXICAL = [
    (0, "v1", 0, -1.0, -2.0), (0, "v2", 0, -3.0, -3.0),
    (1, "v1", 3, -1.0, -1.5), (1, "v2", 3, -2.0, -1.0),
    (2, "v1", 50, -0.5, -0.7), (2, "v2", 50, -0.2, -0.9),
    (3, "v1", 5, -4.0, -1.0),
    (4, "v1", 100, -1.0, -2.0), (4, "v2", 100, -1.0, -2.0), (4, "v3", 100, -2.0, -1.0),
]
ALL = (0.75 + 0.5 + 1.0 + 0.0 + 2 / 3) / 5
IN_VOCAB = (0.5 + 1.0 + 0.0 + 2 / 3) / 4  # bands 1-5, 21-100, 6-20, >100 with one id each


def lexical_case(root: Path, *, wavs: bool = True) -> tuple[Path, Path]:
    rows, scores = [], []
    for n, (i, voice, freq, sw, snw) in enumerate(LEXICAL):
        rows.append({"filename": f"w{n}", "id": i, "voice": voice, "frequency": freq, "word": f"word{i}",
                     "phones": f"w o {i}", "length": 3, "correct": 1})
        rows.append({"filename": f"n{n}", "id": i, "voice": voice, "frequency": freq, "word": None,
                     "phones": f"n o {i}", "length": 3, "correct": 0})
        scores += [(f"w{n}", sw), (f"n{n}", snw)]
    gold = root / "lexical" / "dev" / "gold.csv"
    gold.parent.mkdir(parents=True)
    # Rows shuffled: sWUGGY pairs are joined on (id, voice), never on row order.
    pd.DataFrame(rows).sample(frac=1.0, random_state=3).to_csv(gold, index=False)
    if wavs:
        for r in rows:
            (gold.parent / f"{r['filename']}.wav").touch()
    tsv = root / "lexical.tsv"
    tsv.write_text("".join(f"{k}\t{v}\n" for k, v in scores))
    (root / "lexical.tsv.json").write_text(json.dumps({"normalisation": "mean"}))
    return gold, tsv


def test_lexical_official_aggregation(tmp_path: Path) -> None:
    gold_path, tsv = lexical_case(tmp_path)
    res = score_lexical(read_lexical_gold(gold_path), read_scores(tsv))
    assert res.all == pytest.approx(ALL)
    assert res.all != pytest.approx(6.5 / 10)  # not the flat mean over the 10 (word, non-word) pairs
    assert res.in_vocab == pytest.approx(IN_VOCAB)
    bands = res.by_frequency.set_index("band")
    assert bands.loc["oov", "score"] == 0.75 and bands.loc["6-20", "score"] == 0.0
    assert bands["n"].tolist() == [1, 1, 1, 1, 1]
    assert res.by_id.set_index("id").loc[4, "voices"] == 3
    assert res.by_id["non_word"].iloc[0] == "n o 0"  # non-words without text are named by their phones
    assert res.n_pairs == 10 and res.n_unpaired == 0


def test_lexical_cli_writes_metrics_and_zrc_submission(tmp_path: Path) -> None:
    gold, tsv = lexical_case(tmp_path)
    units = {"encoder": {"kind": "spidr", "checkpoint": "enc.pt"}, "layer": 6, "quantizer": "kmeans", "k": 256,
             "fit": {}, "name": "kmeans", "encoder_name": "spidr"}
    job = {"experiment": {"name": "e1", "lm": "tiny", "units": units}}
    main(["lexical", "--gold", str(gold), "--scores", str(tsv), "--out", str(tmp_path / "m.json"),
          "--submission", str(tmp_path / "sub"), "--config", json.dumps(job)])
    doc = json.loads((tmp_path / "m.json").read_text())
    got = {m["metric"]: m for m in doc["metrics"]}
    assert got["swuggy_all"]["value"] == pytest.approx(100 * ALL)
    assert got["swuggy_in_vocab"]["value"] == pytest.approx(100 * IN_VOCAB)
    assert got["swuggy_all"]["conventions"]["set"] == "dev"
    assert got["swuggy_all"]["conventions"]["normalisation"] == "mean log-likelihood"
    assert doc["labels"] == {"experiment": "e1", "lm": "tiny", "units": "kmeans", "encoder": "spidr",
                             "encoder_kind": "spidr", "layer": 6, "quantizer": "kmeans", "k": 256,
                             "set": None, "seed": None, "kmeans_seed": None}
    assert doc["provenance"]["code_version"]
    # zrc submission: `<wav-stem> <score>`, space separated, every gold file exactly once, exact floats.
    lines = (tmp_path / "sub" / "lexical" / "dev.txt").read_text().splitlines()
    table = dict(line.split(" ") for line in lines)
    assert len(lines) == len(table) == 2 * len(LEXICAL)
    assert set(table) == set(pd.read_csv(gold)["filename"])
    scores = read_scores(tsv)
    assert all(float(v) == scores[k] for k, v in table.items())


def syntactic_rows() -> tuple[list[dict], list[tuple[str, float]]]:
    # (type, subtype, id, voice, score good, score bad); per (type, subtype, id):
    # A/a1/0: 1, 0 -> .5 | A/a1/1: tie -> .5 | A/a2/2: 1 | B/b1/3: 0, 0 -> 0
    cases = [("A", "a1", 0, "v1", -1.0, -2.0), ("A", "a1", 0, "v2", -3.0, -2.0), ("A", "a1", 1, "v1", -1.0, -1.0),
             ("A", "a2", 2, "v1", -1.0, -2.0), ("B", "b1", 3, "v1", -3.0, -2.0), ("B", "b1", 3, "v2", -3.0, -2.0)]
    rows, scores = [], []
    for n, (t, st, i, v, good, bad) in enumerate(cases):
        for correct, score in ((1, good), (0, bad)):
            name = f"s{n}{'g' if correct else 'b'}"
            rows.append({"filename": name, "id": i, "voice": v, "type": t, "subtype": st,
                         "transcription": f"{'good' if correct else 'bad'} {i}", "correct": correct})
            scores.append((name, score))
    return rows, scores


def test_syntactic_pairs_by_row_order_pair_level_and_macro(tmp_path: Path) -> None:
    rows, scores = syntactic_rows()
    gold = pd.DataFrame(rows)
    res = score_syntactic(gold, read_scores(pd.DataFrame(scores, columns=["id", "score"])))
    assert res.pairs == pytest.approx((0.5 + 0.5 + 1.0 + 0.0) / 4)
    assert res.macro == pytest.approx(((0.5 + 0.5 + 1.0) / 3 + 0.0) / 2)
    assert res.by_type.set_index("type")["n"].to_dict() == {"A": 3, "B": 1}
    # The official scorer pairs the k-th correct row with the k-th incorrect one: block order works too.
    blocks = pd.concat([gold[gold.correct == 1], gold[gold.correct == 0]])
    assert score_syntactic(blocks, read_scores(pd.DataFrame(scores, columns=["id", "score"]))).pairs == res.pairs
    # ... but an order that pairs rows of different items is refused instead of silently mis-paired.
    swapped = pd.concat([gold.drop(index=1), gold.loc[[1]]])  # first incorrect row moved to the end
    with pytest.raises(ValueError, match="row order does not pair them"):
        score_syntactic(swapped, read_scores(pd.DataFrame(scores, columns=["id", "score"])))


def test_syntactic_cli(tmp_path: Path) -> None:
    rows, scores = syntactic_rows()
    gold = tmp_path / "syntactic" / "test" / "gold.csv"
    gold.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(gold, index=False)
    for r in rows:
        (gold.parent / f"{r['filename']}.wav").touch()
    tsv = tmp_path / "s.tsv"
    tsv.write_text("id\tscore\n" + "".join(f"{k}\t{v}\n" for k, v in scores))
    main(["syntactic", "--gold", str(gold), "--scores", str(tsv), "--out", str(tmp_path / "m.json"),
          "--config", '{"normalisation": "sum"}', "--submission", str(tmp_path / "sub")])
    doc = json.loads((tmp_path / "m.json").read_text())
    got = {m["metric"]: m for m in doc["metrics"]}
    assert got["sblimp"]["value"] == pytest.approx(50.0)
    assert got["sblimp_macro"]["value"] == pytest.approx(100 / 3)
    assert got["sblimp"]["conventions"]["aggregation"].startswith("pair-level")
    assert got["sblimp_macro"]["conventions"]["aggregation"].startswith("macro")
    assert got["sblimp"]["conventions"]["set"] == "test"
    assert got["sblimp"]["conventions"]["normalisation"] == "sum log-likelihood"
    assert (tmp_path / "sub" / "syntactic" / "test.txt").read_text().splitlines()[0] == "s0g -1.0"


def test_missing_scores_and_bad_gold_are_named(tmp_path: Path) -> None:
    gold, tsv = lexical_case(tmp_path)
    tsv.write_text("".join(tsv.read_text().splitlines(keepends=True)[1:]))
    with pytest.raises(ScoresFileError, match=r"lexical\.tsv: no score for 1 of 20 benchmark files"):
        score_lexical(read_lexical_gold(gold), read_scores(tsv), str(tsv))
    broken = tmp_path / "lexical" / "dev" / "gold.csv"
    broken.write_text("filename,id,voice\nx,1,v\n")
    with pytest.raises(BenchmarkLayoutError, match=r"gold\.csv: missing column\(s\).*\n.*expected layout: sLM21"):
        read_lexical_gold(broken)
    with pytest.raises(BenchmarkLayoutError, match="gold file not found"):
        read_syntactic_gold(tmp_path / "nowhere" / "gold.csv")
    rows, _ = syntactic_rows()
    syn = tmp_path / "syn" / "dev" / "gold.csv"
    syn.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(syn, index=False)
    with pytest.raises(BenchmarkLayoutError, match=r"have no wav beside gold\.csv"):
        read_syntactic_gold(syn)
    with pytest.raises((ValueError, OSError), match=r"gold file not found"):
        main(["lexical", "--gold", str(tmp_path / "x" / "dev" / "gold.csv"), "--scores", str(tsv),
              "--out", str(tmp_path / "m.json")])


def test_scores_table_checks_and_normalisation_sidecar(tmp_path: Path) -> None:
    tsv = tmp_path / "s.tsv"
    tsv.write_text("a\t-1.5\nb\t-2\n")
    assert read_scores(tsv).to_dict() == {"a": -1.5, "b": -2.0}
    tsv.write_text("a\t-1.5\na\t-2\n")
    with pytest.raises(ScoresFileError, match="duplicate id"):
        read_scores(tsv)
    tsv.write_text("a\tnan\n")
    with pytest.raises(ScoresFileError, match="non-finite"):
        read_scores(tsv)
    tsv.write_text("a -1.5\n")
    with pytest.raises(ScoresFileError, match=r"s\.tsv:1: expected `id<TAB>score`"):
        read_scores(tsv)
    with pytest.raises(ValueError, match=r"normalisation of .* is unknown"):
        scoring_conventions(tsv, None)
    (tmp_path / "s.tsv.json").write_text(json.dumps({"normalisation": "sum"}))
    assert scoring_conventions(tsv, None) == {"normalisation": "sum"}
    # what lm.score writes: the conventions block of its `<scores>.json`
    (tmp_path / "s.tsv.json").write_text(json.dumps({"conventions": {"normalisation": "mean", "eos": "scored"}}))
    assert scoring_conventions(tsv, "mean") == {"normalisation": "mean", "lm_eos": "scored"}
    with pytest.raises(ValueError, match="contradicts"):
        scoring_conventions(tsv, "sum")


def test_demo_gold_files_read(demo_corpus: Path) -> None:
    lex = read_lexical_gold(demo_corpus / "sLM21" / "lexical" / "dev" / "gold.csv")
    syn = read_syntactic_gold(demo_corpus / "sLM21" / "syntactic" / "dev" / "gold.csv")
    # Random scores: the real layouts pair up completely under the official rules.
    fake = pd.Series(range(len(lex)), index=lex["filename"], dtype=float)
    res = score_lexical(lex, fake)
    assert res.n_unpaired == 0 and res.n_pairs == len(lex) // 2
    fake = pd.Series(range(len(syn)), index=syn["filename"], dtype=float)
    assert score_syntactic(syn, fake).n_pairs == len(syn) // 2


@pytest.mark.parametrize(("change", "message"), [
    # a non-word moved to another id: id 0 v1 loses its non-word, id 2 v1 gets two
    (lambda g: g.assign(id=g["id"].where(g["filename"] != "n0", 2)),
     r"2 \(id, voice\) group\(s\) break the sWUGGY pairing rule.*id 0 voice v1: 1 word\(s\) and 0 non-word\(s\)"),
    # a non-word marked correct: id 1 v2 has two words and no non-word
    (lambda g: g.assign(correct=g["correct"].where(g["filename"] != "n3", 1)),
     r"1 \(id, voice\) group\(s\).*id 1 voice v2: 2 word\(s\) and 0 non-word\(s\) on line\(s\) \[\d+, \d+\]"),
    # a non-word with a voice its word does not have
    (lambda g: g.assign(voice=g["voice"].where(g["filename"] != "n6", "v9")),
     r"id 3 voice v1: 1 word\(s\) and 0 non-word\(s\).*id 3 voice v9: 0 word\(s\) and 1 non-word\(s\)"),
])
def test_unpaired_lexical_gold_is_refused(tmp_path: Path, change, message: str) -> None:
    gold, tsv = lexical_case(tmp_path)
    change(pd.read_csv(gold)).to_csv(gold, index=False)
    with pytest.raises(BenchmarkLayoutError, match=r"gold\.csv: .*" + message):
        read_lexical_gold(gold)
    # the entry point exits with the error instead of a silently different score
    with pytest.raises((ValueError, OSError), match=r"gold\.csv: .*pairing rule"):
        main(["lexical", "--gold", str(gold), "--scores", str(tsv), "--out", str(tmp_path / "m.json")])
    assert not (tmp_path / "m.json").exists()
