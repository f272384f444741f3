"""Unit-LM data: the utterance split, the memory-mapped token arrays, block packing and the shuffling order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lm.data import IGNORE_INDEX, PackedBlocks, permute, prepare_token_arrays, split_key, train_block_ids
from lm.model import UnitVocab, document_causal_mask
from lm.synthetic import write_markov_units
from units.format import UnitsFileError, UnitsWriter, read_units


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_markov_units(tmp_path_factory.mktemp("units") / "train.parquet", num_utterances=120,
                              vocab_size=32, min_len=1, max_len=60, seed=1)


def test_split_is_by_utterance_and_deterministic():
    keys = [split_key(f"u{i}", seed=0) for i in range(2000)]
    assert keys == [split_key(f"u{i}", seed=0) for i in range(2000)]
    assert 0.07 < np.mean(np.array(keys) < 0.1) < 0.13
    assert keys != [split_key(f"u{i}", seed=1) for i in range(2000)]


def test_token_arrays_hold_every_utterance_once(corpus, tmp_path):
    arrays, stats = prepare_token_arrays(corpus, tmp_path / "data", valid_fraction=0.2, seed=0)
    vocab = UnitVocab(32)
    table = read_units(corpus)
    expected = {"train": [], "valid": []}
    for uid, units in zip(table["id"], table["units"], strict=True):
        expected["valid" if split_key(uid, 0) < 0.2 else "train"].append([vocab.bos_id, *units, vocab.eos_id])
    for split in ("train", "valid"):
        a = arrays[split]
        docs = [a.tokens[a.doc_starts[i]:a.doc_starts[i + 1]].tolist() for i in range(a.num_docs)]
        assert docs == expected[split]
        assert stats[split] == {"utterances": len(docs), "tokens": a.num_tokens}
        assert isinstance(a.tokens, np.memmap)
    assert arrays["valid"].num_docs > 0


def test_arrays_are_cached_and_rebuilt_when_the_input_changes(corpus, tmp_path):
    prepare_token_arrays(corpus, tmp_path / "data", valid_fraction=0.1, seed=0)
    stamp = (tmp_path / "data" / "meta.json").stat().st_mtime_ns
    prepare_token_arrays(corpus, tmp_path / "data", valid_fraction=0.1, seed=0)
    assert (tmp_path / "data" / "meta.json").stat().st_mtime_ns == stamp
    _, stats = prepare_token_arrays(corpus, tmp_path / "data", valid_fraction=0.5, seed=0)
    assert stats["valid"]["utterances"] > 30


def test_tiny_corpus_still_gets_a_valid_utterance(tmp_path):
    path = write_markov_units(tmp_path / "u.parquet", num_utterances=3, vocab_size=8, seed=0)
    _, stats = prepare_token_arrays(path, tmp_path / "data", valid_fraction=0.01, seed=0)
    assert stats["valid"]["utterances"] == 1 and stats["train"]["utterances"] == 2


def test_out_of_range_unit_names_the_utterance(tmp_path):
    path = tmp_path / "bad.parquet"
    with UnitsWriter(path, vocab_size=4, deduplicated=True) as w:
        w.write("fine", [0, 1, 2], [1, 1, 1])
        w.write("broken", [1, 9], [1, 1])
    with pytest.raises(UnitsFileError, match=r"'broken'.*unit 9"):
        prepare_token_arrays(path, tmp_path / "data", valid_fraction=0.0, seed=0)


@pytest.mark.parametrize("block_len", [7, 32, 100])
def test_packing_never_crosses_an_utterance_boundary(corpus, tmp_path, block_len):
    arrays, _ = prepare_token_arrays(corpus, tmp_path / "data", valid_fraction=0.1, seed=0)
    vocab = UnitVocab(32)
    train = arrays["train"]
    blocks = PackedBlocks(train, block_len, vocab)
    doc_of = np.repeat(np.arange(train.num_docs), np.diff(train.doc_starts))
    batch = blocks.batch(np.arange(len(blocks)))
    inputs, labels, positions = (batch[k].numpy() for k in ("input_ids", "labels", "position_ids"))
    mask = document_causal_mask(batch["position_ids"], "sdpa")[:, 0].numpy()
    n = train.num_tokens
    for b in range(len(blocks)):
        index = b * block_len + np.arange(block_len)
        real = index < n
        assert np.array_equal(inputs[b][real], train.tokens[index[real]])
        doc = np.where(real, doc_of[np.minimum(index, n - 1)], -1 - np.arange(block_len))
        # attention: only earlier tokens of the same utterance
        q, k = np.nonzero(mask[b])
        assert np.all(doc[q] == doc[k]) and np.all(k <= q)
        # and every earlier token of the same utterance inside the block is visible
        same = (doc[:, None] == doc[None, :]) & np.tri(block_len, dtype=bool)
        assert np.array_equal(mask[b], same)
        # targets: the next token of the same utterance, never the next utterance's <bos>
        for j in np.flatnonzero(labels[b] != IGNORE_INDEX):
            assert index[j] + 1 < n and doc_of[index[j] + 1] == doc[j]
            assert labels[b][j] == train.tokens[index[j] + 1]
        assert not np.any(labels[b] == vocab.bos_id)
        assert blocks.num_targets(np.array([b])) == np.sum(labels[b] != IGNORE_INDEX)
        # positions restart at each utterance start and at the block start
        starts = np.isin(index, train.doc_starts) | (np.arange(block_len) == 0)
        assert np.all((positions[b] == 0)[real] == starts[real])
    # every within-utterance transition of the stream is a target exactly once
    assert (labels != IGNORE_INDEX).sum() == train.num_tokens - train.num_docs


def test_cross_document_mode_uses_plain_positions(corpus, tmp_path):
    arrays, _ = prepare_token_arrays(corpus, tmp_path / "data", valid_fraction=0.1, seed=0)
    batch = PackedBlocks(arrays["train"], 16, UnitVocab(32), cross_document_attention=True).batch(np.array([3]))
    assert torch.equal(batch["position_ids"][0], torch.arange(16))
    assert not (batch["labels"] == UnitVocab(32).bos_id).any()


@pytest.mark.parametrize("n", [1, 2, 5, 97, 1024, 1025])
def test_permute_is_a_bijection(n):
    out = permute(np.arange(n), n, key=42)
    assert sorted(out.tolist()) == list(range(n))
    if n > 50:
        assert not np.array_equal(out, np.arange(n)) and not np.array_equal(out, permute(np.arange(n), n, key=43))


def test_each_epoch_visits_every_block_once_in_a_new_order():
    n = 37
    ids = train_block_ids(np.arange(3 * n), n, seed=5)
    epochs = ids.reshape(3, n)
    assert all(sorted(e.tolist()) == list(range(n)) for e in epochs)
    assert not np.array_equal(epochs[0], epochs[1])
    assert np.array_equal(train_block_ids(np.arange(40, 50), n, seed=5), ids[40:50])
