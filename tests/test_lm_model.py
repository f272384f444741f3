"""Unit-LM presets, vocabulary and the per-utterance attention mask."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lm.model import (
    PRESETS,
    UnitVocab,
    build_config,
    build_model,
    count_parameters,
    document_attention_mask,
    document_block_mask,
    document_causal_mask,
)

# Packed rows as lm.data makes them: utterances restart at 0, a block may start inside one, padding tokens are
# one-token documents; 80 tokens so that FlexAttention's 128-token tiles are partly filled too.
PACKED_POSITIONS = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3, 4, 5, 0, 1, 2, 3] * 5,
                                 [*range(37), *range(40), 0, 0, 0]])


def test_vocab_layout():
    vocab = UnitVocab(256)
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.size) == (256, 257, 258, 259)


def test_vocab_file_round_trip(tmp_path):
    UnitVocab(100).save(tmp_path)
    assert UnitVocab.load(tmp_path) == UnitVocab(100)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_take_the_unit_vocabulary(preset):
    config = build_config(preset, UnitVocab(50))
    assert (config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id) == (53, 50, 51, 52)


@pytest.mark.parametrize(("preset", "millions"), [("opt-125m", 87.0), ("llama-125m", 85.3),
                                                  ("slam-qwen2-358m", 358.3)])
def test_large_preset_sizes(preset, millions):
    # Meta device: shapes only, no memory. opt-125m is 125M with OPT's 50k text vocabulary, 87.0M with 503 tokens.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(build_config(preset, UnitVocab(500)))
    assert count_parameters(model) / 1e6 == pytest.approx(millions, abs=0.1)


def test_opt_preset_is_shaped_like_opt_125m():
    c = build_config("opt-125m", UnitVocab(256))
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.ffn_dim, c.max_position_embeddings,
            c.activation_function, c.do_layer_norm_before) == (768, 12, 12, 3072, 2048, "relu", True)


def test_llama_preset_is_modern():
    c = build_config("llama-125m", UnitVocab(256))
    assert c.model_type == "llama" and c.hidden_act == "silu" and c.rope_parameters["rope_theta"] == 10000.0


def test_overrides_apply_and_unknown_keys_fail():
    assert build_config("tiny", UnitVocab(8), {"num_hidden_layers": 1}).num_hidden_layers == 1
    with pytest.raises(ValueError, match="'n_layer'"):
        build_config("tiny", UnitVocab(8), {"n_layer": 1})
    with pytest.raises(ValueError, match="'vocab_size'"):
        build_config("tiny-opt", UnitVocab(8), {"vocab_size": 10})
    with pytest.raises(ValueError, match="unknown LM preset"):
        build_config("gpt5", UnitVocab(8))


def test_same_seed_same_weights():
    config = build_config("tiny-opt", UnitVocab(16))
    a, b = build_model(config, seed=3), build_model(config, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_document_causal_mask_by_hand():
    # two documents (positions restart) then a padding token (position 0 again)
    positions = torch.tensor([[0, 1, 2, 0, 1, 0]])
    mask = document_causal_mask(positions, "sdpa")[0, 0].int()
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0],
                             [0, 0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]])
    assert torch.equal(mask, expected)
    additive = document_causal_mask(positions, "eager")[0, 0]
    assert torch.equal(additive == 0, expected.bool())


def test_masked_packing_equals_separate_documents():
    """Two utterances packed in one row give the same logits as each run alone (OPT: learned positions)."""
    vocab = UnitVocab(20)
    for preset in ("tiny-opt", "tiny"):
        model = build_model(build_config(preset, vocab), seed=0).eval()
        a = torch.tensor([[vocab.bos_id, 3, 4, 5]])
        b = torch.tensor([[vocab.bos_id, 7, 8]])
        packed = torch.cat([a, b], dim=1)
        positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])
        with torch.no_grad():
            joint = model(input_ids=packed, position_ids=positions,
                          attention_mask=document_causal_mask(positions, "sdpa")).logits
            alone = torch.cat([model(input_ids=a).logits, model(input_ids=b).logits], dim=1)
        torch.testing.assert_close(joint, alone, rtol=1e-5, atol=1e-5)


def test_flex_block_mask_allows_the_same_pairs_and_gives_the_same_attention():
    """The BlockMask FlexAttention takes (GPU path) equals the dense mask (CPU path), pair for pair and in output."""
    from torch.nn.attention.flex_attention import flex_attention

    batch, length = PACKED_POSITIONS.shape
    block = document_block_mask(PACKED_POSITIONS)
    assert document_attention_mask(PACKED_POSITIONS, "flex_attention").shape == (batch, 1, length, length)
    index = torch.arange(length)
    pairs = block.mask_mod(torch.arange(batch)[:, None, None], 0, index[None, :, None], index[None, None, :])
    dense = document_causal_mask(PACKED_POSITIONS, "sdpa")
    assert torch.equal(pairs, dense[:, 0])
    assert torch.equal(document_attention_mask(PACKED_POSITIONS, "sdpa"), dense)

    torch.manual_seed(0)
    q, k, v = (torch.randn(batch, 2, length, 8) for _ in range(3))
    with torch.no_grad(), pytest.warns(UserWarning):  # eager flex (CPU, forward only) warns that it is unfused
        flex = flex_attention(q, k, v, block_mask=block)
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    torch.testing.assert_close(flex, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "tiny-opt"])
def test_flex_attention_training_loss_equals_the_dense_mask(preset, tmp_path):
    """lm.train's loss on packed blocks: attn_implementation flex_attention (compiled by transformers; CPU runs it
    forward only) equals sdpa with the dense mask, Llama-style and OPT (whose mask ignores position_ids)."""
    import numpy as np

    from lm.config import TrainConfig
    from lm.data import PackedBlocks, prepare_token_arrays
    from lm.synthetic import write_markov_units
    from lm.train import forward_loss

    units = write_markov_units(tmp_path / "u.parquet", num_utterances=40, vocab_size=16, min_len=5, max_len=50)
    arrays, _ = prepare_token_arrays(units, tmp_path / "data", valid_fraction=0.1, seed=0)
    vocab = UnitVocab(16)
    batch = PackedBlocks(arrays["train"], 96, vocab).batch(np.arange(4))
    losses = {}
    for impl in ("sdpa", "flex_attention"):
        cfg = TrainConfig(preset=preset, attn_implementation=impl)
        model = build_model(build_config(preset, vocab, {}, impl), seed=0).eval()
        with torch.no_grad():
            losses[impl] = forward_loss(model, batch, cfg)
    torch.testing.assert_close(losses["flex_attention"], losses["sdpa"], rtol=1e-5, atol=1e-4)
