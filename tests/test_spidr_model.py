"""SpidR / DinoSR model: architecture sizes, codebook EMA, schedules, masking, inference API, checkpoints, config."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from spidr.checkpoint import CheckpointError, export_official, load_encoder, load_model, save_model
from spidr.config import ConfigError, ModelConfig, TrainConfig, batch_plan, preset
from spidr.masking import mask_indices
from spidr.model import Codebook, Codebooks, ConvBlock, build_model, compile_model, layer_norm_gelu, standardize
from spidr.schedules import exponential_ema, linear_ema, tri_stage_lr


def expected_encoder_params(cfg: ModelConfig) -> int:
    """Parameters of CNN + feature projection + student transformer, from the architecture description."""
    n, c_in = 0, 1
    for c, k, _ in cfg.conv_layers:
        n += c * c_in * k + (c if cfg.conv_bias else 0) + 2 * c  # conv + affine channel LayerNorm
        c_in = c
    d, f = cfg.embed_dim, cfg.ffn_dim
    n += 2 * c_in + c_in * d + d  # projection: LayerNorm + Linear
    k = max(3, cfg.pos_conv_kernel // cfg.pos_conv_depth)
    n += cfg.pos_conv_depth * (d * (d // cfg.pos_conv_groups) * k + d)  # grouped convs with bias, LN without affine
    n += 2 * d  # LayerNorm after the positional conv
    per_layer = d * 3 * d + (3 * d if cfg.qkv_bias else 0) + d * d + d  # qkv, out projection
    per_layer += 2 * d + d * f + f + f * d + d + 2 * d  # LN, FFN, final LN
    return n + cfg.num_layers * per_layer


def test_base_encoder_parameter_count_matches_architecture():
    cfg = preset("base").model
    model = build_model(cfg, teacher=False, seed=0)
    encoder = [model.feature_extractor, model.feature_projection, model.student]
    count = sum(p.numel() for m in encoder for p in m.parameters())
    assert count == expected_encoder_params(cfg)
    assert round(count / 1e6, 1) == 93.1  # the paper's "base" size
    heads = sum(p.numel() for p in model.heads.parameters()) + model.mask_embedding.numel()
    assert heads == cfg.num_codebooks * (cfg.embed_dim + 1) * cfg.codebook_size + cfg.embed_dim


@pytest.mark.parametrize("name", ["base", "small", "tiny"])
def test_frame_counts(name):
    model = build_model(name, teacher=False, seed=0)
    assert model.frame_count(16_000) == 49
    assert model.frame_count(320_000) == 999
    assert model.frame_count(399) == 0 and model.frame_count(400) == 1
    feats = model.features(torch.randn(1, 16_000))
    assert feats.shape == (1, 49, model.embed_dim)


def test_codebook_ema_update_by_hand():
    cb = Codebook(dim=2, size=3, decay=0.9)
    cb.codebook.copy_(torch.tensor([[2.0, 0.0], [0.0, 4.0], [-6.0, -6.0]]))  # sums
    cb.counts.copy_(torch.tensor([2.0, 2.0, 3.0]))  # codewords: (1, 0), (0, 2), (-2, -2)
    targets = torch.tensor([[0.9, 0.1], [1.2, -0.2], [0.1, 1.7]])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as in bf16 training: the codebooks stay in fp32
        labels = Codebooks([cb]).quantize([targets], update=True)[0]
    assert labels.tolist() == [0, 0, 1]
    # codeword 0: count 2, sum (2.1, -0.1); codeword 1: count 1, sum (0.1, 1.7); codeword 2: unused, unchanged
    assert torch.allclose(cb.counts, torch.tensor([0.9 * 2 + 0.1 * 2, 0.9 * 2 + 0.1 * 1, 3.0]))
    expected = torch.tensor([[0.9 * 2 + 0.1 * 2.1, 0.9 * 0 + 0.1 * -0.1], [0.9 * 0 + 0.1 * 0.1, 0.9 * 4 + 0.1 * 1.7],
                             [-6.0, -6.0]])
    assert torch.allclose(cb.codebook, expected, rtol=1e-6, atol=1e-7)
    # without update (eval), assignments only
    before = cb.codebook.clone()
    Codebooks([cb]).quantize([targets], update=False)
    assert torch.equal(cb.codebook, before)


def test_codebook_statistics_accumulate_over_the_update_interval():
    torch.manual_seed(0)
    cbs = Codebooks([Codebook(dim=4, size=8, decay=0.9)], update_interval=2)
    ref = copy.deepcopy(cbs[0])
    t1, t2 = torch.randn(5, 4), torch.randn(7, 4)
    cbs.quantize([t1], update=True)
    assert torch.equal(cbs[0].codebook, ref.codebook) and cbs.pending_steps == 1  # waiting
    pending = cbs.pending_state()
    fresh = Codebooks([copy.deepcopy(ref)], update_interval=2)
    fresh.load_pending_state(pending)  # what a resumed run restores
    for books in (cbs, fresh):
        labels = books.quantize([t2], update=True)[0]
        assert books.pending_steps == 0 and not books.pending_counts.any()
    # one EMA step with the summed statistics of both batches, assigned with the unchanged codebook
    (c1, m1), (c2, m2) = ref.statistics(ref.assign(t1), t1), ref.statistics(labels, t2)
    assert torch.equal(labels, ref.assign(t2))
    ref.update(c1 + c2, m1 + m2)
    for books in (cbs, fresh):
        assert torch.allclose(books[0].codebook, ref.codebook) and torch.allclose(books[0].counts, ref.counts)


def test_codebook_step_over_micro_batches_equals_one_large_batch():
    """The trainer's mode: forwards only add statistics; `step()` makes the one update, as one batch of all of them."""
    torch.manual_seed(0)
    parts = [torch.randn(n, 4) for n in (5, 7, 3)]
    for interval in (1, 2):
        big = Codebooks([Codebook(dim=4, size=8, decay=0.9)], update_interval=interval)
        micro = copy.deepcopy(big)
        micro.update_per_forward = False
        for _ in range(interval):  # `interval` optimiser steps, each of three micro-batches
            labels = [micro.quantize([t], update=True)[0] for t in parts]
            assert torch.equal(micro[0].codebook, big[0].codebook)  # nothing moves before the step
            micro.step()
            assert torch.equal(torch.cat(labels), big.quantize([torch.cat(parts)], update=True)[0])
            assert not micro.step_stats.any()
        assert micro.pending_steps == big.pending_steps == 0
        torch.testing.assert_close(micro[0].counts, big[0].counts, rtol=0, atol=0)  # integer counts: exact
        torch.testing.assert_close(micro[0].codebook, big[0].codebook, rtol=1e-6, atol=1e-6)  # summation order
        assert not torch.equal(micro[0].counts, torch.ones(8))


def test_small_batches_collapse_the_codebook_unless_statistics_accumulate():
    """Online k-means on low-rank targets (like the teacher's): 24 targets per update leave few codewords alive.

    Updated codewords lose the random init's component outside the data's subspace, come closer to every target
    than the untouched ones, and take over; summing 50 steps' statistics per update keeps 3x more alive.
    """
    g = torch.Generator().manual_seed(0)
    data = torch.randn(6000, 8, generator=g) @ torch.randn(8, 64, generator=g)  # rank 8 in 64 dimensions
    data = (data - data.mean(0)) / data.std(0)  # per-channel standardised, as instance norm does

    def alive(interval: int) -> int:
        torch.manual_seed(0)
        books = Codebooks([Codebook(dim=64, size=64, decay=0.9)], update_interval=interval)
        for _ in range(300):
            books.quantize([data[torch.randint(6000, (24,), generator=g)]], update=True)
        return int(torch.bincount(books[0].assign(data), minlength=64).gt(0).sum())

    few, many = alive(1), alive(50)
    assert few <= 12 and many >= 25, (few, many)


def test_codebook_init_is_standardised_per_dimension():
    cb = Codebook(dim=16, size=256, decay=0.9)
    assert torch.allclose(cb.codebook.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.allclose(cb.codebook.var(0, unbiased=False), torch.ones(16), atol=1e-3)
    assert torch.equal(cb.counts, torch.ones(256))


def test_tri_stage_learning_rate():
    kw = {"peak": 5e-4, "warmup": 12_000, "hold": 188_000, "decay": 200_000}
    assert tri_stage_lr(0, **kw) == pytest.approx(5e-6)
    assert tri_stage_lr(6_000, **kw) == pytest.approx(5e-6 + (5e-4 - 5e-6) / 2)
    assert tri_stage_lr(12_000, **kw) == pytest.approx(5e-4)
    assert tri_stage_lr(199_999, **kw) == pytest.approx(5e-4)
    assert tri_stage_lr(300_000, **kw) == pytest.approx(5e-5)  # halfway through the decay: 0.1x
    assert tri_stage_lr(400_000, **kw) == pytest.approx(5e-6)
    assert tri_stage_lr(500_000, **kw) == pytest.approx(5e-6)
    cfg = TrainConfig.from_dict({})  # the paper recipe, derived from max_steps=400k
    assert (cfg.warmup_steps, cfg.hold_steps, cfg.decay_steps, cfg.freeze_at) == (12_000, 188_000, 200_000, 200_000)
    assert cfg.ema_timescale == 20_000


def test_ema_schedules():
    assert exponential_ema(0) == pytest.approx(0.999)
    assert exponential_ema(20_000) == pytest.approx(1 - 0.001 / math.e)
    frozen_from = math.ceil(20_000 * math.log(1e4))  # 1 - decay <= 1e-7 from step 184,207
    assert frozen_from == 184_207
    assert exponential_ema(frozen_from - 1) < 1.0
    assert exponential_ema(frozen_from) == 1.0
    assert linear_ema(0) == pytest.approx(0.999)
    assert linear_ema(15_000) == pytest.approx(0.99945)
    assert linear_ema(30_000) == pytest.approx(0.9999)
    assert linear_ema(199_999) == pytest.approx(0.9999)
    assert linear_ema(200_000) == 1.0


def test_masking_statistics():
    gen = torch.Generator().manual_seed(0)
    fractions = [mask_indices(1, t, generator=gen).shape[1] / t for t in range(250, 1000, 3)]
    assert sum(fractions) / len(fractions) == pytest.approx(0.566, abs=0.01)  # the reference's ~57%
    idx = mask_indices(6, 300, generator=gen)
    assert idx.shape[0] == 6 and 0.45 < idx.shape[1] / 300 < 0.6  # equalised down to the sparsest row
    assert bool((idx[:, 1:] > idx[:, :-1]).all()) and int(idx.min()) >= 0 and int(idx.max()) < 300
    short = mask_indices(2, 5, generator=gen)  # shorter than a span: still masks something
    assert short.shape[1] >= 1


def official_mask(batch: int, frames: int, gen: torch.Generator, prob: float = 0.8, length: int = 10,
                  min_masks: int = 2) -> torch.Tensor:
    """The official compute_mask_indices with a padding mask of no padding (static lengths, overlap), as a boolean
    (batch, frames) mask: one batch-wide count drawn, then per row its own count, starts and spans."""
    max(min_masks, int(prob * frames / float(length) + torch.rand(1, generator=gen)))
    per_row = []
    for _ in range(batch):
        num = max(min_masks, int(prob * frames / float(length) + torch.rand(1, generator=gen)))
        lengths = torch.full((num,), length)
        min_len = int(min(lengths))
        if frames - min_len <= num:
            min_len = frames - num - 1
        starts = torch.randperm(frames - min_len, generator=gen)[:num]
        spans = torch.tensor([int(starts[j]) + o for j in range(len(starts)) for o in range(int(lengths[j]))])
        per_row.append(torch.unique(spans[spans < frames]))
    smallest = min(len(m) for m in per_row)
    mask = torch.zeros(batch, frames, dtype=torch.bool)
    for i, m in enumerate(per_row):
        mask[i, m[torch.randperm(len(m), generator=gen)[:smallest]] if len(m) > smallest else m] = True
    return mask


@pytest.mark.parametrize(("batch", "frames"), [(1, 250), (4, 300), (7, 61), (3, 12), (2, 5)])
def test_masking_draws_the_span_count_per_row_like_the_official_code(batch, frames):
    ours = mask_indices(batch, frames, generator=torch.Generator().manual_seed(7))
    reference = official_mask(batch, frames, torch.Generator().manual_seed(7))
    mask = torch.zeros(batch, frames, dtype=torch.bool).scatter_(1, ours, True)
    assert torch.equal(mask, reference)


@pytest.mark.parametrize(
    ("kind", "mode"), [("spidr", "layer_norm"), ("dinosr", "layer_norm"), ("spidr", "group_norm")]
)
def test_padded_batch_inference_equals_one_at_a_time(kind, mode):
    """The padded frames never change the real ones: the valid mask, and GroupNorm front ends run alone."""
    torch.manual_seed(0)
    cfg = TrainConfig.from_dict({"kind": kind, "preset": "tiny", "model": {"extractor_mode": mode}}).model
    model = build_model(cfg, kind=kind, seed=0).eval()
    wavs = [standardize(torch.randn(n)) for n in (16_000, 9_123, 700, 23_456, 16_000)]
    batch = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    lengths = [w.numel() for w in wavs]
    feats = model.layer_outputs(batch, [1, 3, 4], lengths)
    probs = model.head_probs(batch, model.codebook_layers, lengths)
    for b, w in enumerate(wavs):
        n = model.frame_count(w.numel())
        alone = model.layer_outputs(w[None], [1, 3, 4])
        alone_p = model.head_probs(w[None], model.codebook_layers)
        for layer in (1, 3, 4):
            assert alone[layer].shape == (1, n, model.embed_dim) and alone[layer].dtype == torch.float32
            torch.testing.assert_close(feats[layer][b, :n], alone[layer][0], rtol=1e-5, atol=1e-5)
        for layer in model.codebook_layers:
            assert alone_p[layer].shape == (1, n, model.codebook_size)
            torch.testing.assert_close(probs[layer][b, :n], alone_p[layer][0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(alone_p[layer].sum(-1), torch.ones(1, n))


@pytest.mark.parametrize("matmul_devices", [("cpu",), ()], ids=["cpu_path", "gpu_path"])
@pytest.mark.parametrize("mode", ["layer_norm", "group_norm"])
def test_front_end_equals_a_plain_conv1d_stack(mode, matmul_devices, monkeypatch):
    """The matmul / channels-last front end computes what Conv1d -> norm -> GELU layers compute, on either path
    (CPU: every conv a matmul over windows; GPU: conv2d after the first, here run on the CPU)."""
    monkeypatch.setattr(ConvBlock, "matmul_devices", matmul_devices)
    cfg = TrainConfig.from_dict({"preset": "tiny", "model": {"extractor_mode": mode}}).model
    model = build_model(cfg, seed=0)
    wav = torch.randn(2, 7_001)
    x = wav.unsqueeze(1)
    for i, block in enumerate(model.feature_extractor.conv_layers):
        x = block.conv(x)
        if mode == "layer_norm":
            x = block.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        elif i == 0:
            x = block.layer_norm(x)
        x = F.gelu(x)
    torch.testing.assert_close(model.feature_extractor(wav), x.transpose(1, 2), rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # extraction: the CPU path runs conv2d after the first conv (faster without backward)
        torch.testing.assert_close(model.feature_extractor(wav), x.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_front_end_norm_and_gelu_run_outside_autocast_in_the_conv_dtype():
    """CUDA autocast would upcast the front end's LayerNorm (the largest activations) to fp32: it must be off there.

    CPU autocast keeps LayerNorm in bf16 either way, so this checks what the norm sees rather than its output.
    """
    model = build_model("tiny", seed=0)
    seen = []

    def spy(x, weight, bias, eps):
        seen.append((x.dtype, torch.is_autocast_enabled("cpu")))
        return layer_norm_gelu(x, weight, bias, eps)

    for block in model.feature_extractor.conv_layers:
        block.norm_gelu = spy
    wav = torch.randn(2, 16_000)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.feature_extractor(wav)
    assert seen == [(torch.bfloat16, False)] * len(model.feature_extractor.conv_layers)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model.feature_extractor(wav), rtol=0.1, atol=0.1)


@pytest.mark.slow
def test_compiled_model_matches_eager():
    """`compile_model` (spidr.train's `compile: true`) changes speed, not results."""
    # no dropout: the RNGs of the two runs differ
    cfg = TrainConfig.from_dict({"preset": "tiny", "model": {"dropout": 0.0, "attention_dropout": 0.0}}).model
    model = build_model(cfg, seed=0).train()
    wav = torch.randn(2, 16_000)
    index = mask_indices(2, model.frame_count(16_000), generator=torch.Generator().manual_seed(0))
    compiled = copy.deepcopy(model)
    compile_model(compiled)
    loss, _ = model(wav, index)
    loss_c, _ = compiled(wav, index)
    loss.backward()
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss, rtol=1e-4, atol=1e-4)
    for (name, p), q in zip(model.named_parameters(), compiled.parameters(), strict=True):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_features_are_pre_residual_ffn_outputs():
    model = build_model("tiny", seed=0).eval()
    w = torch.randn(16_000)
    got = model.layer_outputs(standardize(w)[None], [2])[2][0]
    x = model.features(F.layer_norm(w, w.shape)[None])
    x = x + model.student.pos_conv_embed(x)
    x = model.student.layer_norm(x)
    x, _ = model.student.layers[0](x)
    layer = model.student.layers[1]
    x = layer.layer_norm(x + layer.attention(x))
    torch.testing.assert_close(got, layer.feed_forward(x)[0], rtol=1e-5, atol=1e-6)


def test_heads_per_kind():
    spidr = build_model("tiny", kind="spidr", seed=0).eval()
    dinosr = build_model("tiny", kind="dinosr", seed=0).eval()
    dinosr.load_state_dict(spidr.state_dict())
    w = torch.randn(16_000)
    layers = spidr.codebook_layers
    assert layers == [2, 3, 4]
    x = standardize(w)[None]
    feats = spidr.layer_outputs(x, layers)
    sp = spidr.head_probs(x, layers)
    for k, layer in enumerate(layers):  # SpidR: head k reads its own layer's FFN output
        torch.testing.assert_close(sp[layer], F.softmax(spidr.heads[k][0](feats[layer]), -1), rtol=1e-5, atol=1e-6)
    final, _ = dinosr.student(dinosr.features(x))
    dp = dinosr.head_probs(x, layers)
    for k, layer in enumerate(layers):  # DinoSR: every head reads the last layer
        torch.testing.assert_close(dp[layer], F.softmax(dinosr.heads[k][0](final), -1), rtol=1e-5, atol=1e-6)
    assert all(len(head) == 1 for head in spidr.heads)  # a Linear only (official key layout heads.k.0)
    with pytest.raises(ValueError, match="layer 1"):
        spidr.head_probs(x, [1])
    with pytest.raises(ValueError, match="layer 5"):
        spidr.layer_outputs(x, [5])


def test_training_forward_and_ema():
    torch.manual_seed(0)
    model = build_model("tiny", seed=0).train()
    wavs = torch.randn(2, 16_000)
    idx = mask_indices(2, model.frame_count(16_000), generator=torch.Generator().manual_seed(0))
    before = [cb.codebook.clone() for cb in model.codebooks]
    loss, stats = model(wavs, idx)
    assert stats["frames"].item() == idx.numel() and torch.isfinite(loss)
    # Normalised in the model only: the per-frame mean by default, or by the frame count the trainer passes.
    torch.testing.assert_close(loss.detach(), stats["loss_sum"] / idx.numel())
    assert 0.5 * math.log(model.codebook_size) < loss.item() < 2 * math.log(model.codebook_size)
    assert stats["target_counts"].sum().item() == idx.numel() * model.cfg.num_codebooks
    assert all(not torch.equal(b, cb.codebook) for b, cb in zip(before, model.codebooks, strict=True))
    loss.backward()
    assert model.student.layers[-1].final_layer_norm.weight.grad is None  # unused by SpidR's loss, frozen
    assert model.mask_embedding.grad is not None
    assert model.feature_extractor.conv_layers[0].conv.weight.grad is not None
    assert all(p.grad is None for p in model.teacher.parameters())
    t = model.teacher.layers[0].feed_forward.output_dense.weight
    s = model.student.layers[0].feed_forward.output_dense.weight
    expected = 0.9 * t + 0.1 * s
    model.update_ema(0.9)
    torch.testing.assert_close(t, expected)
    pos_t, pos_s = model.teacher.pos_conv_embed.convs[0].weight, model.student.pos_conv_embed.convs[0].weight
    torch.testing.assert_close(pos_t, pos_s)  # copied, not averaged
    frozen = t.clone()
    model.update_ema(1.0)
    assert torch.equal(t, frozen)


def test_teacher_init_modes():
    reinit = build_model(ModelConfig(**{**preset("tiny").model.__dict__, "teacher_init": "reinit"}), seed=0)
    qkv = [m.layers[0].attention.qkv.weight for m in (reinit.teacher, reinit.student)]
    assert not torch.equal(*qkv)
    assert torch.equal(reinit.teacher.layer_norm.weight, reinit.student.layer_norm.weight)
    copy = build_model(ModelConfig(**{**preset("tiny").model.__dict__, "teacher_init": "copy"}), seed=0)
    for t, s in zip(copy.teacher.parameters(), copy.student.parameters(), strict=True):
        assert torch.equal(t, s)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def official_layout(cfg: ModelConfig, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A state dict written from the documented release key names and shapes (reference §8), not from our model."""
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    sd: dict[str, torch.Tensor] = {}
    c_in = 1
    for i, (c, k, _) in enumerate(cfg.conv_layers):
        sd[f"feature_extractor.conv_layers.{i}.conv.weight"] = r(c, c_in, k)
        if cfg.extractor_mode == "layer_norm" or i == 0:  # group_norm mode: a GroupNorm on the first conv only
            sd[f"feature_extractor.conv_layers.{i}.layer_norm.weight"] = r(c)
            sd[f"feature_extractor.conv_layers.{i}.layer_norm.bias"] = r(c)
        c_in = c
    d, f = cfg.embed_dim, cfg.ffn_dim
    sd |= {"feature_projection.layer_norm.weight": r(c_in), "feature_projection.layer_norm.bias": r(c_in),
           "feature_projection.projection.weight": r(d, c_in) * 0.05, "feature_projection.projection.bias": r(d),
           "mask_embedding": r(d), "current_step": torch.tensor([1234])}
    k = max(3, cfg.pos_conv_kernel // cfg.pos_conv_depth)
    for net in ("student", "teacher"):
        for j in range(cfg.pos_conv_depth):
            sd[f"{net}.pos_conv_embed.convs.{j}.weight"] = r(d, d // cfg.pos_conv_groups, k) * 0.05
            sd[f"{net}.pos_conv_embed.convs.{j}.bias"] = r(d)
        sd[f"{net}.layer_norm.weight"], sd[f"{net}.layer_norm.bias"] = r(d), r(d)
        for i in range(cfg.num_layers):
            p = f"{net}.layers.{i}."
            sd |= {p + "attention.qkv.weight": r(3 * d, d) * 0.05, p + "attention.proj.weight": r(d, d) * 0.05,
                   p + "attention.proj.bias": r(d), p + "layer_norm.weight": r(d), p + "layer_norm.bias": r(d),
                   p + "feed_forward.intermediate_dense.weight": r(f, d) * 0.05,
                   p + "feed_forward.intermediate_dense.bias": r(f),
                   p + "feed_forward.output_dense.weight": r(d, f) * 0.05, p + "feed_forward.output_dense.bias": r(d),
                   p + "final_layer_norm.weight": r(d), p + "final_layer_norm.bias": r(d)}
    for h in range(cfg.num_codebooks):
        sd[f"heads.{h}.0.weight"], sd[f"heads.{h}.0.bias"] = r(cfg.codebook_size, d), r(cfg.codebook_size)
        sd[f"codebooks.{h}.codebook"] = r(cfg.codebook_size, d)
        sd[f"codebooks.{h}.counts"] = torch.rand(cfg.codebook_size, generator=gen) + 0.5
    return sd


def official_config_json(cfg: ModelConfig) -> dict:
    return {"model": {
        "extractor_mode": cfg.extractor_mode, "extractor_conv_layer_config": [list(c) for c in cfg.conv_layers],
        "extractor_conv_bias": False, "encoder_embed_dim": cfg.embed_dim, "encoder_num_layers": cfg.num_layers,
        "encoder_num_heads": cfg.num_heads, "encoder_ff_interm_features": cfg.ffn_dim,
        "encoder_pos_conv_kernel": cfg.pos_conv_kernel, "encoder_pos_conv_groups": cfg.pos_conv_groups,
        "encoder_pos_conv_depth": cfg.pos_conv_depth, "encoder_qkv_bias": False, "encoder_layer_norm_first": False,
        "num_codebooks": cfg.num_codebooks, "codebook_size": cfg.codebook_size,
    }, "run": {"model_type": "spidr"}}


@pytest.mark.parametrize("wrapped", [True, False])
def test_official_layout_loads_and_round_trips(tmp_path, wrapped):
    cfg = ModelConfig(**{**preset("tiny").model.__dict__, "extractor_mode": "layer_norm" if wrapped else "group_norm"})
    sd = official_layout(cfg, torch.Generator().manual_seed(0))
    path = tmp_path / "release" / "spidr_tiny.pt"
    path.parent.mkdir()
    torch.save({"model": sd, "step": 1234} if wrapped else sd, path)
    (path.parent / "config.json").write_text(json.dumps(official_config_json(cfg)))
    model = load_model(path)
    assert model.kind == "spidr" and model.cfg.num_heads == cfg.num_heads
    assert model.cfg.extractor_mode == cfg.extractor_mode
    assert int(model.current_step) == 1234
    for key, value in model.state_dict().items():
        assert torch.equal(value, sd[key]), key
    out = tmp_path / "export" / "spidr_tiny.pt"
    export_official(model, out, write_config=True)
    again = torch.load(out, weights_only=True)["model"]
    assert set(again) == set(sd) and all(torch.equal(again[k], sd[k]) for k in sd)
    encoder = load_encoder(out)
    assert encoder.teacher is None and not encoder.training
    assert encoder.layer_outputs(torch.randn(1, 8000), [4])[4].shape == (1, 24, cfg.embed_dim)


def test_official_layout_without_config_is_an_error_naming_it(tmp_path):
    """No config.json beside an official file: the head count is in no tensor shape, so it is never guessed."""
    cfg = preset("tiny").model
    path = tmp_path / "dinosr_tiny.pt"
    torch.save({"model": official_layout(cfg, torch.Generator().manual_seed(0))}, path)
    with pytest.raises(CheckpointError, match=r"dinosr_tiny\.pt: .*config\.json is missing.*write_config=True"):
        load_encoder(path)
    (tmp_path / "config.json").write_text(json.dumps({"model": {"encoder_embed_dim": cfg.embed_dim}}))
    with pytest.raises(CheckpointError, match=r"config\.json: no encoder_num_heads"):
        load_encoder(path)


def test_refuses_other_files_with_clear_errors(tmp_path):
    cfg = preset("tiny").model
    sd = official_layout(cfg, torch.Generator().manual_seed(0))
    (tmp_path / "config.json").write_text(json.dumps(official_config_json(cfg)))
    bad = dict(sd)
    del bad["heads.0.0.bias"]
    bad["student.extra.weight"] = torch.zeros(1)
    torch.save({"model": bad}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad\.pt.*heads\.0\.0\.bias.*student\.extra\.weight"):
        load_encoder(tmp_path / "bad.pt")
    torch.save({"encoder.layers.0.fc1.weight": torch.zeros(1)}, tmp_path / "fairseq.pt")
    with pytest.raises(CheckpointError, match="fairseq"):
        load_encoder(tmp_path / "fairseq.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt.*feature_extractor\.conv_layers\.0\.conv\.weight"):
        load_encoder(tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pt"):
        load_encoder(tmp_path / "text.pt")
    wrong = dict(sd)
    wrong["heads.1.0.weight"] = torch.zeros(3, 3)
    torch.save(wrong, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"heads\.1\.0\.weight"):
        load_encoder(tmp_path / "shape.pt")


def test_random_model_checkpoint_for_other_stages(tmp_path):
    model = build_model("tiny", kind="dinosr", seed=3)
    save_model(model, tmp_path / "tiny.pt")
    loaded = load_encoder(tmp_path / "tiny.pt")
    assert loaded.kind == "dinosr" and loaded.codebook_layers == [2, 3, 4]
    assert (loaded.num_layers, loaded.embed_dim, loaded.codebook_size) == (4, 32, 16)
    w = torch.randn(12_000)
    torch.testing.assert_close(loaded.layer_outputs(w[None], [2])[2], model.eval().layer_outputs(w[None], [2])[2])
    with pytest.raises(CheckpointError, match="dinosr"):
        load_model(tmp_path / "tiny.pt", kind="spidr")
    ckpt = torch.load(tmp_path / "tiny.pt", weights_only=True)
    assert "code_version" in ckpt["provenance"]


# ---------------------------------------------------------------------------------------------------------------
# Config


def test_global_batch_is_reached_on_any_world_size_that_divides_it():
    base = TrainConfig.from_dict({}).data
    assert (base.global_batch_samples, base.batch_samples) == (60_800_000, 3_800_000)  # the paper: 16 x 3.8M
    for world, accumulation in ((1, 16), (2, 8), (4, 4), (8, 2), (16, 1)):
        plan = batch_plan(base, world)
        assert (plan.accumulation, plan.effective_batch_samples, plan.exact) == (accumulation, 60_800_000, True)
    assert batch_plan(base, 16).describe().startswith("16 process(es) x 1 accumulation x 3800000 samples = 60800000")
    # the demo presets keep their single-process batch: one micro-batch per step
    for name, samples in (("small", 128_000), ("tiny", 64_000)):
        plan = batch_plan(TrainConfig.from_dict({"preset": name}).data, 1)
        assert (plan.accumulation, plan.effective_batch_samples) == (1, samples)
    with pytest.raises(ConfigError, match=r"data\.global_batch_samples=60800000 cannot be reached exactly on world "
                                          r"size 3 with data\.batch_samples=3800000.*\[1, 2, 4, 8, 16\].*"
                                          r"data\.inexact_global_batch: true to train at 57000000"):
        batch_plan(base, 3)
    with pytest.raises(ConfigError, match=r"world size 32"):
        batch_plan(base, 32)
    inexact = batch_plan(TrainConfig.from_dict({"data": {"inexact_global_batch": True}}).data, 3)
    assert (inexact.accumulation, inexact.effective_batch_samples, inexact.exact) == (5, 57_000_000, False)
    assert "NOT data.global_batch_samples=60800000" in inexact.describe() and not inexact.to_dict()["exact"]
    with pytest.raises(ConfigError, match=r"encoders\.x\.train\.data.*global_batch_samples=1000000 is not a "
                                          r"multiple of data\.batch_samples=300000"):
        TrainConfig.from_dict({"data": {"global_batch_samples": 1_000_000, "batch_samples": 300_000}},
                              "encoders.x.train")


def test_config_overrides_and_unknown_keys():
    cfg = TrainConfig.from_dict({"kind": "dinosr", "preset": "small", "max_steps": 100,
                     "optim": {"lr": 1e-3, "betas": [0.9, 0.98]}, "model": {"num_layers": 6}})
    assert cfg.model.num_layers == 6 and cfg.optim.betas == (0.9, 0.98) and cfg.ema.schedule == "linear"
    assert cfg.model.layer_drop == 0.05 and cfg.freeze_at == 50 and cfg.warmup_steps == 3
    assert cfg.model.codebook_layers == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ConfigError, match=r"model\.num_layer\b"):
        TrainConfig.from_dict({"model": {"num_layer": 3}})
    with pytest.raises(ConfigError, match="'lr_max'"):
        TrainConfig.from_dict({"lr_max": 3})
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        TrainConfig.from_dict({"optim": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="unknown preset"):
        TrainConfig.from_dict({"preset": "huge"})
    with pytest.raises(ConfigError, match="kind"):
        TrainConfig.from_dict({"kind": "hubert"})
    with pytest.raises(ConfigError, match="num_heads"):
        TrainConfig.from_dict({"model": {"num_heads": 5}})
    # what checkpoints record reloads identically
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
