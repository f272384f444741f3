"""Encoders of the units stage: layer numbering, batched == one at a time, chunking, specs and validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spidr.model import standardize
from tests.units_helpers import make_hf_hubert, make_spidr
from units.batching import encode_batched, plan_pieces
from units.config import EncoderConfigError, EncoderSpec, frame_count, validate_units_request
from units.encoders import check_units_config, get_encoder

LENGTHS = (16000, 9000, 12345, 400, 3000, 719)


@pytest.fixture(scope="module")
def wavs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, generator=g) * 0.1 for n in LENGTHS]


@pytest.fixture(scope="module", params=["group", "layer"])
def hf_dir(request, tmp_path_factory):
    return make_hf_hubert(tmp_path_factory.mktemp("hf") / request.param, norm=request.param)


@pytest.fixture(scope="module")
def spidr_ckpt(tmp_path_factory):
    return make_spidr(tmp_path_factory.mktemp("spidr") / "tiny.pt")


def test_frame_count_is_the_conv_formula_of_every_encoder(hf_dir, spidr_ckpt):
    hf = get_encoder({"kind": "hf", "model": str(hf_dir)})
    sp = get_encoder({"kind": "spidr", "checkpoint": str(spidr_ckpt)})
    mfcc = get_encoder({"kind": "mfcc"})
    lengths = torch.tensor([399, 400, 719, 720, 16000, 16399, 16400, 123457])
    hf_counts = hf.model._get_feat_extract_output_lengths(lengths).tolist()
    for n, hf_n in zip(lengths.tolist(), hf_counts, strict=True):
        expected = max(0, (n - 400) // 320 + 1)
        assert frame_count(n) == hf.frame_count(n) == sp.frame_count(n) == hf_n == expected
        if n >= 400:
            assert mfcc.features([torch.zeros(n)], 0)[0].shape == (expected, 39)


def test_hf_layer_L_is_hidden_states_L(hf_dir, wavs):
    """Layer 0 = pre-transformer embeddings, layer L = output of block L, as transformers' hidden_states[L]."""
    enc = get_encoder({"kind": "hf", "model": str(hf_dir)})
    wav = wavs[0]
    with torch.no_grad():
        hidden = enc.model(wav[None], output_hidden_states=True).hidden_states
    assert len(hidden) == enc.num_layers + 1
    for layer in range(enc.num_layers + 1):
        ours = enc.features([wav], layer)[0]
        torch.testing.assert_close(ours, hidden[layer][0], rtol=0, atol=1e-6)
    # Distinct layers really are distinct (a wrong offset could not pass the loop above unnoticed).
    assert not torch.allclose(enc.features([wav], 1)[0], enc.features([wav], 2)[0])
    # The model is whole again after the truncated forward.
    assert len(enc.model.encoder.layers) == enc.num_layers


def test_spidr_layers_are_one_based_pre_residual_ffn_outputs(spidr_ckpt, wavs):
    enc = get_encoder({"kind": "spidr", "checkpoint": str(spidr_ckpt)})
    wav = wavs[0]
    with torch.no_grad():
        _, outs = enc.model.student(enc.model.features(standardize(wav)[None]), None)
    for layer in range(1, enc.num_layers + 1):
        torch.testing.assert_close(enc.features([wav], layer)[0], outs[layer - 1][0], rtol=0, atol=1e-5)
    with pytest.raises(EncoderConfigError, match="layer=0"):
        enc.features([wav], 0)
    with pytest.raises(EncoderConfigError, match=f"layer={enc.num_layers + 1}"):
        enc.features([wav], enc.num_layers + 1)


def test_hf_batched_equals_one_at_a_time(hf_dir, wavs):
    enc = get_encoder({"kind": "hf", "model": str(hf_dir)})
    for layer in (0, enc.num_layers):
        batched = enc.features(wavs, layer)
        for wav, got in zip(wavs, batched, strict=True):
            assert got.shape == (frame_count(wav.numel()), enc.dim)
            torch.testing.assert_close(got, enc.features([wav], layer)[0], rtol=0, atol=1e-5)


def test_naive_padding_would_contaminate_group_norm_models(tmp_path, wavs):
    """Why HFEncoder runs GroupNorm front ends per utterance: a plain padded batch changes the short ones."""
    enc = get_encoder({"kind": "hf", "model": str(make_hf_hubert(tmp_path / "g", norm="group"))})
    short, long = wavs[1], wavs[0]
    batch = torch.nn.utils.rnn.pad_sequence([long, short], batch_first=True)
    mask = torch.zeros_like(batch, dtype=torch.long)
    mask[0], mask[1, : short.numel()] = 1, 1
    with torch.no_grad():
        naive = enc.model(batch, attention_mask=mask, output_hidden_states=True).hidden_states[2][1]
    alone = enc.features([short], 2)[0]
    assert (naive[: alone.shape[0]] - alone).abs().max() > 1e-3
    torch.testing.assert_close(enc.features([long, short], 2)[1], alone, rtol=0, atol=1e-5)


def test_spidr_batched_equals_one_at_a_time_and_codebook_probs(spidr_ckpt, wavs):
    enc = get_encoder({"kind": "spidr", "checkpoint": str(spidr_ckpt)})
    layer = enc.codebook_layers[0]
    feats, probs = enc.features(wavs, layer), enc.codebook_probs(wavs, layer)
    for wav, f, p in zip(wavs, feats, probs, strict=True):
        torch.testing.assert_close(f, enc.features([wav], layer)[0], rtol=0, atol=1e-5)
        assert p.shape == (frame_count(wav.numel()), enc.codebook_size)
        torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[0]), rtol=0, atol=1e-5)
        reference = enc.model.head_probs(standardize(wav)[None], [layer])[layer][0]
        torch.testing.assert_close(p, reference, rtol=0, atol=1e-6)


def test_spidr_encoder_standardises_each_utterance(spidr_ckpt, wavs):
    enc = get_encoder({"kind": "spidr", "checkpoint": str(spidr_ckpt)})
    a, b = enc.features([wavs[0], wavs[1] * 7.0 + 0.3], 2)
    torch.testing.assert_close(b, enc.features([wavs[1]], 2)[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a, enc.features([wavs[0] * 0.01], 2)[0], rtol=1e-4, atol=1e-4)


def test_plan_pieces_cover_every_frame_once():
    for n in (400, 16000, 160_000, 160_321, 1_000_000):
        total = frame_count(n)
        for chunk, context in ((50, 0), (50, 7), (100, 250), (10_000, 10)):
            pieces = plan_pieces(0, n, chunk_frames=chunk, context_frames=context)
            covered = []
            for p in pieces:
                assert p.start % 320 == 0 and 0 <= p.start < p.stop <= n
                assert p.skip + p.keep <= frame_count(p.stop - p.start)
                first = p.start // 320 + p.skip
                covered += range(first, first + p.keep)
            assert covered == list(range(total))


def _run(enc, wavs, layer, **kw):
    return encode_batched(wavs, lambda ws: enc.features(ws, layer), frame_count_fn=enc.frame_count, **kw)


def test_chunking_is_exact_for_local_encoders(tmp_path, wavs):
    """MFCC (+-4 frames) and HF layer 0 of a LayerNorm model (conv + positional conv, +-8 frames) are local:
    with more context than that, chunked frames equal whole-utterance frames; without context they do not."""
    long = [torch.cat(wavs) * 3, wavs[0]]
    mfcc = get_encoder({"kind": "mfcc"})
    hf = get_encoder({"kind": "hf", "model": str(make_hf_hubert(tmp_path / "l", norm="layer"))})
    for enc, context in ((mfcc, 8), (hf, 12)):
        whole = _run(enc, long, 0, chunk_frames=10_000)
        chunked = _run(enc, long, 0, chunk_frames=20, context_frames=context, batch_samples=16000 * 3)
        for a, b in zip(whole, chunked, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
        blind = _run(enc, long, 0, chunk_frames=20, context_frames=0)
        assert (blind[0] - whole[0]).abs().max() > 1e-3


def test_chunking_with_whole_context_equals_unchunked_spidr(spidr_ckpt, wavs):
    """Transformers see the whole window: with context covering the utterance, every chunk's window is the whole
    utterance, so the stitched core frames must equal the unchunked ones (checks the frame alignment)."""
    enc = get_encoder({"kind": "spidr", "checkpoint": str(spidr_ckpt)})
    long = [torch.cat(wavs)]
    whole = _run(enc, long, 2, chunk_frames=10_000)[0]
    chunked = _run(enc, long, 2, chunk_frames=17, context_frames=10_000)[0]
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    # Chunks with some context: same shape, and most frames far from the edges stay close.
    near = _run(enc, long, 2, chunk_frames=60, context_frames=30)[0]
    assert near.shape == whole.shape


def test_batched_runner_is_independent_of_batch_size(wavs):
    mfcc = get_encoder({"kind": "mfcc"})
    a = _run(mfcc, wavs, 0, batch_samples=400, max_batch=1)
    b = _run(mfcc, wavs, 0, batch_samples=16000 * 100, max_batch=64)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------------------------------------------------
# Specs and validation


def test_spec_parsing_errors_name_the_problem():
    assert EncoderSpec.parse('{"kind": "mfcc"}') == EncoderSpec("mfcc")
    assert EncoderSpec.parse({"kind": "hf", "model": "m"}).to_dict() == {"kind": "hf", "model": "m"}
    with pytest.raises(EncoderConfigError, match="layr"):
        EncoderSpec.parse({"kind": "mfcc", "layr": 3})
    with pytest.raises(EncoderConfigError, match=r"missing key 'encoder\.kind'"):
        EncoderSpec.parse({"model": "m"})
    with pytest.raises(EncoderConfigError, match="'model'"):
        EncoderSpec.parse({"kind": "hf"})
    with pytest.raises(EncoderConfigError, match="'checkpoint'"):
        EncoderSpec.parse({"kind": "spidr", "model": "x"})
    with pytest.raises(EncoderConfigError, match="kind='wav2vec'"):
        EncoderSpec.parse({"kind": "wav2vec"})
    with pytest.raises(EncoderConfigError, match="not valid JSON"):
        EncoderSpec.parse("{kind: mfcc}")


@pytest.mark.parametrize(
    ("kind", "layer", "quantizer", "depth", "heads", "message"),
    [
        ("spidr", 3, "codebook", 12, range(5, 13), "codebook heads only on layers \\[5, 6"),
        ("spidr", 13, "kmeans", 12, range(5, 13), "layer=13 is beyond"),
        ("spidr", 0, None, 12, None, "layer=0 for a spidr encoder"),
        ("hf", 11, "codebook", 12, None, "'hf' encoder has none"),
        ("hf", 13, "kmeans", 12, None, "layer=13 is beyond .* 0..12"),
        ("hf", -1, None, None, None, "layer=-1"),
        ("mfcc", 0, "codebook", None, None, "'mfcc' encoder has none"),
        ("mfcc", 6, "kmeans", None, None, "layer=6 for an MFCC"),
        ("spidr", 6, "argmax", 12, None, "quantizer='argmax'"),
    ],
)
def test_validation_errors_name_the_value(kind, layer, quantizer, depth, heads, message):
    with pytest.raises(EncoderConfigError, match=message):
        validate_units_request(kind, layer, quantizer, num_layers=depth, codebook_layers=heads)


def test_validation_accepts_the_paper_configs():
    validate_units_request("spidr", 6, "codebook", num_layers=12, codebook_layers=range(5, 13))
    validate_units_request("dinosr", 5, "kmeans", num_layers=12)
    validate_units_request("hf", 11, "kmeans", num_layers=12)
    validate_units_request("hf", 0, None, num_layers=12)
    validate_units_request("spidr", 6, "codebook")  # depth unknown before pretraining: what can be checked is
    validate_units_request("mfcc", 0, "kmeans")


def test_check_units_config_reads_the_depth_of_existing_encoders(hf_dir, spidr_ckpt):
    check_units_config({"kind": "hf", "model": str(hf_dir)}, 3, "kmeans")
    with pytest.raises(EncoderConfigError, match="layer=4 is beyond"):
        check_units_config({"kind": "hf", "model": str(hf_dir)}, 4, "kmeans")
    check_units_config({"kind": "spidr", "checkpoint": str(spidr_ckpt)}, 2, "codebook")
    with pytest.raises(EncoderConfigError, match="layer=1: this encoder has codebook heads only on layers"):
        check_units_config({"kind": "spidr", "checkpoint": str(spidr_ckpt)}, 1, "codebook")


def test_mfcc_features_are_finite_and_39_dims(wavs):
    feats = get_encoder({"kind": "mfcc"}).features(wavs, 0)
    for wav, f in zip(wavs, feats, strict=True):
        assert f.shape == (frame_count(wav.numel()), 39)
        assert torch.isfinite(f).all()
    assert np.isfinite(feats[0].numpy()).all()


@pytest.mark.parametrize("family", ["wav2vec2", "wavlm"])
def test_other_hf_families_follow_the_same_layer_convention(tmp_path, family, wavs):
    import transformers

    cls, cfg_cls = {"wav2vec2": ("Wav2Vec2Model", "Wav2Vec2Config"), "wavlm": ("WavLMModel", "WavLMConfig")}[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )
    getattr(transformers, cls)(cfg).eval().save_pretrained(tmp_path / family)
    enc = get_encoder({"kind": "hf", "model": str(tmp_path / family)})
    with torch.no_grad():
        hidden = enc.model(wavs[0][None], output_hidden_states=True).hidden_states
    for layer in range(enc.num_layers + 1):
        torch.testing.assert_close(enc.features([wavs[0]], layer)[0], hidden[layer][0], rtol=0, atol=1e-6)
    batched = enc.features(wavs[:3], 2)
    for wav, got in zip(wavs[:3], batched, strict=True):
        torch.testing.assert_close(got, enc.features([wav], 2)[0], rtol=0, atol=1e-5)


def test_check_units_config_from_a_training_config():
    """Before pretraining, the training config decides depth and heads (small preset: 8 layers, heads 3..8)."""
    spec = {"kind": "spidr", "checkpoint": "not/trained/yet.pt"}
    check_units_config(spec, 6, "codebook", train_config={"preset": "small"})
    with pytest.raises(EncoderConfigError, match="layer=2: this encoder has codebook heads only on layers"):
        check_units_config(spec, 2, "codebook", train_config={"preset": "small"})
    with pytest.raises(EncoderConfigError, match="layer=9 is beyond"):
        check_units_config(spec, 9, "kmeans", train_config={"preset": "small"})
    check_units_config(spec, 12, "codebook", train_config={"preset": "base"})


def test_dinosr_checkpoints_load_as_dinosr_only(tmp_path, wavs):
    path = make_spidr(tmp_path / "dinosr.pt", kind="dinosr")
    enc = get_encoder({"kind": "dinosr", "checkpoint": str(path)})
    layer = enc.codebook_layers[0]
    assert enc.kind == "dinosr" and enc.codebook_probs(wavs[:1], layer)[0].shape[1] == enc.codebook_size
    with pytest.raises(ValueError, match=r"dinosr\.pt: holds a dinosr model, but kind='spidr'"):
        get_encoder({"kind": "spidr", "checkpoint": str(path)})
    with pytest.raises(EncoderConfigError, match=r"missing\.pt: spidr checkpoint not found"):
        get_encoder({"kind": "spidr", "checkpoint": str(tmp_path / "missing.pt")})
