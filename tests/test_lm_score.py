"""Unit-LM scoring: mean/sum and BOS/EOS conventions by hand, batched == one at a time, the TSV CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lm.model import UnitVocab, build_config, build_model
from lm.score import load_lm, score_sequences, score_units_file
from lm.synthetic import write_markov_units
from lm.train import write_model_dir
from units.format import UnitsWriter, read_units

K = 12


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm") / "model"
    write_model_dir(build_model(build_config("tiny", UnitVocab(K)), seed=0), UnitVocab(K), out, {"test": True})
    return out


@pytest.fixture(scope="module")
def model(model_dir):
    return load_lm(model_dir, "cpu")


def test_uniform_model_scores_by_hand():
    """All-zero weights give uniform next-token distributions: log p = -log(K + 3) for every scored token."""
    lm = build_model(build_config("tiny", UnitVocab(K)), seed=0).eval()
    with torch.no_grad():
        for p in lm.parameters():
            p.zero_()
    seqs = [[1, 2, 3], [], [5] * 7]
    v = math.log(K + 3)
    np.testing.assert_allclose(score_sequences(lm, seqs, "sum"), [-4 * v, -1 * v, -8 * v], rtol=1e-6)
    np.testing.assert_allclose(score_sequences(lm, seqs, "mean"), [-v, -v, -v], rtol=1e-6)
    np.testing.assert_allclose(score_sequences(lm, [[1, 2, 3]], "sum", eos=False), [-3 * v], rtol=1e-6)


def test_scores_are_next_token_log_probs_of_bos_units_eos(model):
    """By hand: sum over targets u_1..u_n, <eos> of log softmax, given <bos> + prefix (one unpadded forward)."""
    vocab = UnitVocab(K)
    units = [3, 7, 1, 1, 4]
    tokens = torch.tensor([[vocab.bos_id, *units, vocab.eos_id]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=tokens[:, :-1]).logits.double(), dim=-1)[0]
    per_token = [logp[i, t].item() for i, t in enumerate(tokens[0, 1:].tolist())]
    assert len(per_token) == len(units) + 1  # <bos> is not scored, <eos> is
    total = sum(per_token)
    assert score_sequences(model, [units], "sum")[0] == pytest.approx(total, rel=1e-5)
    assert score_sequences(model, [units], "mean")[0] == pytest.approx(total / 6, rel=1e-5)
    assert score_sequences(model, [units], "sum", eos=False)[0] == pytest.approx(sum(per_token[:-1]), rel=1e-5)


def test_batched_equals_one_at_a_time_exactly(model):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, K, size=n).tolist() for n in rng.integers(0, 70, size=40)]
    for normalisation in ("mean", "sum"):
        alone = np.array([score_sequences(model, [s], normalisation, batch_size=1)[0] for s in seqs])
        for batch_size in (3, 16, 64):
            batched = score_sequences(model, seqs, normalisation, batch_size=batch_size)
            assert np.array_equal(batched, alone), (normalisation, batch_size)


def test_bad_sequences_are_refused(model):
    with pytest.raises(ValueError, match="sequence 1"):
        score_sequences(model, [[1], [K]])
    with pytest.raises(ValueError, match="normalisation"):
        score_sequences(model, [[1]], "max")
    with pytest.raises(ValueError, match="empty"):
        score_sequences(model, [[]], eos=False)
    with pytest.raises(ValueError, match="exceed"):
        score_sequences(model, [[1] * 2000])


def test_cli_writes_one_score_per_utterance_with_conventions(model_dir, model, tmp_path):
    units = write_markov_units(tmp_path / "eval.parquet", num_utterances=25, vocab_size=K, min_len=1, max_len=40)
    out = tmp_path / "scores" / "eval.tsv"
    from lm.score import main

    main(["--model", str(model_dir), "--units", str(units), "--out", str(out), "--config", '{"normalisation": "sum"}'])
    lines = [line.split("\t") for line in out.read_text().splitlines()]
    table = read_units(units)
    assert [uid for uid, _ in lines] == table["id"].tolist()
    expected = score_sequences(model, list(table["units"]), "sum")
    np.testing.assert_array_equal([float(s) for _, s in lines], expected)
    meta = json.loads((tmp_path / "scores" / "eval.tsv.json").read_text())
    assert meta["conventions"]["normalisation"] == "sum" and "not scored" in meta["conventions"]["bos"]
    assert meta["utterances"] == 25 and meta["code_version"]


def test_cli_refuses_units_of_another_vocabulary(model_dir, tmp_path):
    path = tmp_path / "other.parquet"
    with UnitsWriter(path, vocab_size=K + 1, deduplicated=True) as w:
        w.write("a", [1, 2], [1, 1])
    with pytest.raises(ValueError, match="vocab_size"):
        score_units_file(model_dir, path, tmp_path / "s.tsv")
    assert not (tmp_path / "s.tsv").exists()
