"""spidr.checkpoint: the official DinoSR (fairseq) checkpoint layout, written here key by key with random tensors,
loads into our DinoSR with every tensor where fairseq's modules put it, and converts to our format."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from spidr.checkpoint import CheckpointError, convert_official_dinosr, load_model

DIM, FFN, HEADS, LAYERS, CODEBOOKS, V, CONV = 16, 32, 2, 3, 2, 8, 8
KERNELS = (10, 3, 3, 3, 3, 2, 2)  # wav2vec 2.0's, which DinoSR keeps
CFG = {"_name": "dinosr", "extractor_mode": "layer_norm", "encoder_layers": LAYERS, "encoder_embed_dim": DIM,
       "encoder_ffn_embed_dim": FFN, "encoder_attention_heads": HEADS, "conv_bias": False, "conv_pos": 6,
       "conv_pos_groups": 2, "pos_conv_depth": 2, "layer_norm_first": False, "average_top_k_layers": CODEBOOKS,
       "codebook_size": V, "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
       "dropout_input": 0.0, "encoder_layerdrop": 0.05, "codebook_init_decay": 0.9, "discrete": True}


def transformer(g: torch.Generator) -> dict[str, torch.Tensor]:
    """fairseq wav2vec 2.0 TransformerEncoder tensors (pos_conv_depth 2, post-LN layers), keys without `encoder.`."""
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    t = {f"pos_conv.{j}.0.{p}": r(DIM, DIM // 2, 3) if p == "weight" else r(DIM) for j in range(2)
         for p in ("weight", "bias")}
    t |= {"layer_norm.weight": r(DIM), "layer_norm.bias": r(DIM)}
    for i in range(LAYERS):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            t[f"layers.{i}.self_attn.{name}.weight"], t[f"layers.{i}.self_attn.{name}.bias"] = r(DIM, DIM), r(DIM)
        for name in ("self_attn_layer_norm", "final_layer_norm"):
            t[f"layers.{i}.{name}.weight"], t[f"layers.{i}.{name}.bias"] = r(DIM), r(DIM)
        t[f"layers.{i}.fc1.weight"], t[f"layers.{i}.fc1.bias"] = r(FFN, DIM), r(FFN)
        t[f"layers.{i}.fc2.weight"], t[f"layers.{i}.fc2.bias"] = r(DIM, FFN), r(DIM)
    return t


def fairseq_checkpoint(*, with_ema: bool = True, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    model = {f"feature_extractor.conv_layers.{i}.0.weight": r(CONV, 1 if i == 0 else CONV, k)
             for i, k in enumerate(KERNELS)}
    model |= {f"feature_extractor.conv_layers.{i}.2.1.{p}": r(CONV) for i in range(7) for p in ("weight", "bias")}
    model |= {"layer_norm.weight": r(CONV), "layer_norm.bias": r(CONV), "post_extract_proj.weight": r(DIM, CONV),
              "post_extract_proj.bias": r(DIM), "mask_emb": r(DIM)}
    model |= {f"encoder.{k}": v for k, v in transformer(g).items()}
    for i in range(CODEBOOKS):
        model[f"heads.{i}.weight"], model[f"heads.{i}.bias"] = r(V, DIM), r(V)
        model[f"_codebook{i}"], model[f"_codebook_cnts{i}"] = r(V, DIM), torch.rand(V, generator=g) + 1
    if with_ema:  # the EMA teacher of the transformer; DinoSR copies pos_conv rather than averaging it
        model["_ema"] = {k: v for k, v in transformer(g).items() if not k.startswith("pos_conv")}
    model["_pre_encoder_cnn"] = {"0.0.weight": r(CONV, 1, 10)}  # after the CNN freeze; not used for inference
    return {"cfg": {"model": dict(CFG), "common": {"seed": 1}}, "model": model, "optimizer_history": [],
            "extra_state": {}}


def test_official_layout_lands_where_fairseq_modules_put_it(tmp_path) -> None:
    ckpt = fairseq_checkpoint()
    src = ckpt["model"]
    torch.save(ckpt, tmp_path / "dinosr_base.pt")
    model = load_model(tmp_path / "dinosr_base.pt")
    assert model.kind == "dinosr" and model.cfg.num_heads == HEADS and model.cfg.qkv_bias
    assert model.cfg.pos_conv_kernel == 6 and model.cfg.layer_drop == 0.05
    ours = model.state_dict()
    q, k, v = (src[f"encoder.layers.1.self_attn.{n}_proj.weight"] for n in "qkv")
    assert torch.equal(ours["student.layers.1.attention.qkv.weight"], torch.cat([q, k, v]))
    assert torch.equal(ours["student.layers.2.feed_forward.output_dense.bias"], src["encoder.layers.2.fc2.bias"])
    assert torch.equal(ours["student.layers.0.layer_norm.weight"], src["encoder.layers.0.self_attn_layer_norm.weight"])
    assert torch.equal(ours["feature_extractor.conv_layers.3.layer_norm.bias"],
                       src["feature_extractor.conv_layers.3.2.1.bias"])
    assert torch.equal(ours["feature_projection.layer_norm.weight"], src["layer_norm.weight"])
    assert torch.equal(ours["mask_embedding"], src["mask_emb"])
    assert torch.equal(ours["heads.1.0.weight"], src["heads.1.weight"])
    assert torch.equal(ours["codebooks.1.codebook"], src["_codebook1"])
    assert torch.equal(ours["codebooks.1.counts"], src["_codebook_cnts1"])
    ema = src["_ema"]
    assert torch.equal(ours["teacher.layers.0.attention.proj.weight"], ema["layers.0.self_attn.out_proj.weight"])
    assert torch.equal(ours["teacher.pos_conv_embed.convs.1.weight"], src["encoder.pos_conv.1.0.weight"])

    # The fused attention computes what fairseq's (torch's) multi-head attention computes with separate q/k/v.
    x = torch.randn(1, 5, DIM, generator=torch.Generator().manual_seed(1))
    p = "encoder.layers.0.self_attn."
    want, _ = F.multi_head_attention_forward(
        x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), DIM, HEADS, None,
        torch.cat([src[p + f"{n}_proj.bias"] for n in "qkv"]), None, None, False, 0.0,
        src[p + "out_proj.weight"], src[p + "out_proj.bias"], training=False, need_weights=False,
        use_separate_proj_weight=True, q_proj_weight=src[p + "q_proj.weight"], k_proj_weight=src[p + "k_proj.weight"],
        v_proj_weight=src[p + "v_proj.weight"])
    with torch.no_grad():
        got = model.student.layers[0].attention(x)
    torch.testing.assert_close(got, want.transpose(0, 1), rtol=1e-5, atol=1e-5)
    probs = model.head_probs(torch.randn(1, 16000), model.codebook_layers)
    assert all(t.shape == (1, 49, V) for t in probs.values())


def test_without_teacher_the_student_is_copied_and_conversion_round_trips(tmp_path) -> None:
    torch.save(fairseq_checkpoint(with_ema=False), tmp_path / "dinosr.pt")
    model = load_model(tmp_path / "dinosr.pt")
    ours = model.state_dict()
    assert torch.equal(ours["teacher.layers.2.attention.qkv.weight"], ours["student.layers.2.attention.qkv.weight"])
    convert_official_dinosr(tmp_path / "dinosr.pt", tmp_path / "ours.pt")
    again = load_model(tmp_path / "ours.pt")
    assert again.kind == "dinosr" and again.cfg == model.cfg
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.items())


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c["cfg"]["model"].pop("encoder_attention_heads"), "no encoder_attention_heads.*never guessed"),
    (lambda c: c["cfg"]["model"].update(pos_conv_depth=1), "pos_conv_depth=1"),
    (lambda c: c.pop("cfg"), "without its cfg.model dict"),
    (lambda c: c["model"].update({"final_proj.weight": torch.zeros(2, 2)}),
     r"unconverted:final_proj\.weight\] unexpected"),
])
def test_unusable_official_files_are_named(tmp_path, change, message: str) -> None:
    ckpt = fairseq_checkpoint()
    change(ckpt)
    torch.save(ckpt, tmp_path / "dinosr.pt")
    with pytest.raises(CheckpointError, match=rf"dinosr\.pt: .*{message}"):
        load_model(tmp_path / "dinosr.pt")
