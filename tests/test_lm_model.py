"""Unit-LM presets, vocabulary and the per-utterance attention mask."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from lm.model import PRESETS, UnitVocab, build_config, build_model, count_parameters, document_causal_mask


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
