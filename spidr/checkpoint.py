"""SpidR / DinoSR checkpoints: our format, and the official release state-dict layout (load and export).

Our format is a dict written with `torch.save` and read with `torch.load(weights_only=True)`:

    {"format": FORMAT, "version": 1, "kind": "spidr" | "dinosr", "model_config": {...}, "model": state_dict,
     "step": int, "train_config": {...} | None, "provenance": {...}, ...}

`model` uses the official key layout (reference §8), so `export_official` only re-wraps it. Official files are
either `{"model": state_dict, ...}` (spidr_base.pt, dinosr_base_reproduced.pt) or a bare state dict (HF
`final.pt`). Their architecture comes from the official `config.json` beside the file, which must be there: the
head count is not in any tensor shape, and a wrong guess changes every output (the tensor shapes fill in only what
the config leaves out). Their kind comes from the `kind` argument, that config.json, or the file name (`dinosr`
in it), SpidR otherwise.
The official DinoSR release (fairseq) is read as it is too: `convert_fairseq_dinosr` maps its layout onto ours,
with the architecture from the checkpoint's own cfg.model.
Anything else is refused with a CheckpointError naming the file and the missing / unexpected keys.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import torch

from common.artefacts import ArtefactError, load_torch
from common.runtime import save_checkpoint
from spidr.config import PAPER_CONV_LAYERS, ConfigError, ModelConfig, model_config_from_dict, to_jsonable
from spidr.model import MODELS, DinoSR

FORMAT = "textless-slm/spidr-checkpoint"
VERSION = 1
_MARKER_KEY = "feature_extractor.conv_layers.0.conv.weight"


class CheckpointError(ValueError):
    """A file that is not a usable SpidR / DinoSR checkpoint; the message names the file and why."""


# ---------------------------------------------------------------------------------------------------------------
# Writing


# torch.save through common.io.atomic_write: the one atomic checkpoint writer, shared with the trainers.
atomic_torch_save = save_checkpoint


def checkpoint_dict(model: DinoSR, *, step: int = 0, train_config: dict | None = None, **extra: Any) -> dict:
    """Our checkpoint payload for `model` (the full training module: student, teacher, heads, codebooks)."""
    if model.teacher is None:
        raise CheckpointError("cannot save a model built without its teacher (load it with teacher=True)")
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": model.kind,
        "model_config": to_jsonable(dataclasses.asdict(model.cfg)),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": int(step),
        "train_config": train_config,
        **extra,
    }


def save_model(model: DinoSR, path: str | Path, *, step: int = 0, train_config: dict | None = None, **extra) -> None:
    """Write `model` in our format, atomically (e.g. a randomly initialised `build_model("tiny")` for tests)."""
    if "provenance" not in extra:
        from common.io import provenance

        extra["provenance"] = provenance(train_config)
    atomic_torch_save(checkpoint_dict(model, step=step, train_config=train_config, **extra), path)


def export_official(model: DinoSR, path: str | Path, *, write_config: bool = False) -> None:
    """Write `{"model": state_dict}` in the official release layout (loadable by the official `build_model`).

    With `write_config`, also write the architecture as an official `config.json` beside it (the official
    loader and ours read it; needed for anything but the paper's base architecture).
    """
    if model.teacher is None:
        raise CheckpointError("the official layout holds the teacher: load the model with teacher=True to export it")
    atomic_torch_save({"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, path)
    if write_config:
        from common.io import atomic_write_json

        atomic_write_json(Path(path).with_name("config.json"), official_config(model.cfg))


def official_config(cfg: ModelConfig) -> dict[str, Any]:
    """The official DinoSRConfig / SpidRConfig fields for an architecture (a flat dict, as in config.json)."""
    ours = to_jsonable(dataclasses.asdict(cfg))
    return {theirs: ours[mine] for theirs, mine in _OFFICIAL_NAMES.items()}


# ---------------------------------------------------------------------------------------------------------------
# Reading


def read_checkpoint(path: str | Path) -> Any:
    """torch.load(weights_only=True) on CPU, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        return load_torch(path, what="checkpoint", remedy="delete it and rerun the rule that writes it (pretrain: "
                          "`python -m spidr.train`), or point at another checkpoint")
    except ArtefactError as err:  # truncated, corrupt, or a pickle that would run code
        raise CheckpointError(str(err)) from err


def load_model(
    path: str | Path, map_location: str | torch.device = "cpu", *, kind: str | None = None, teacher: bool = True
) -> DinoSR:
    """Load our checkpoint or an official release file into a SpidR / DinoSR model (eval mode).

    With `teacher=False` the teacher's weights are checked but not kept (inference needs only the student).
    """
    path = Path(path)
    obj = read_checkpoint(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if obj.get("version") != VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {obj.get('version')}, this code reads {VERSION}")
        file_kind = obj.get("kind")
        if file_kind not in MODELS:
            raise CheckpointError(f"{path}: unknown model kind {file_kind!r}")
        if kind is not None and kind != file_kind:
            raise CheckpointError(f"{path}: holds a {file_kind} model, but kind={kind!r} was asked for")
        try:
            cfg = model_config_from_dict(obj["model_config"])
        except ConfigError as err:
            raise CheckpointError(f"{path}: bad model_config ({err})") from err
        kind, state = file_kind, obj["model"]
    elif is_fairseq_dinosr(obj):
        if kind not in (None, "dinosr"):
            raise CheckpointError(f"{path}: a fairseq DinoSR checkpoint, but kind={kind!r} was asked for")
        cfg, state = convert_fairseq_dinosr(obj, path)
        kind = "dinosr"
    else:
        state = _official_state_dict(obj, path)
        official = _sibling_official_config(path)
        if official is None:
            raise CheckpointError(
                f"{path}: an official SpidR/DinoSR state dict needs its architecture, and "
                f"{path.with_name('config.json')} is missing (or not an official config): put the config.json that "
                "comes with the release next to the file, or write one from a loaded model with "
                "spidr.checkpoint.export_official(model, path, write_config=True). The attention head count is not "
                "in any tensor shape, so it is never guessed")
        cfg = _infer_config(state, path, official)
        kind = kind or _official_kind(path, official)
        if kind not in MODELS:
            raise CheckpointError(f"{path}: unknown model kind {kind!r}; expected one of {sorted(MODELS)}")
        if "current_step" not in state:  # not essential for inference; tolerated
            state = {**state, "current_step": torch.zeros(1, dtype=torch.int64)}

    model = MODELS[kind](cfg, teacher=teacher)
    _load_state(model, state, path, teacher=teacher)
    step = int(state["current_step"].reshape(-1)[0]) if "current_step" in state else 0
    model.current_step.fill_(step)
    return model.to(map_location).eval()


# ---------------------------------------------------------------------------------------------------------------
# The official DinoSR release (Liu et al., 2023: a fairseq plugin, github.com/Alexander-H-Liu/dinosr)
#
# A fairseq checkpoint {"cfg": {"model": {...}}, "model": state_dict, ...}, with the wav2vec 2.0 module names:
# feature_extractor.conv_layers.I.0 (conv), .2.1 (LayerNorm, extractor_mode layer_norm); layer_norm and
# post_extract_proj (our feature_projection); mask_emb; encoder.pos_conv.J.0 (the pos_conv_depth > 1 conv blocks);
# encoder.layer_norm; encoder.layers.L.{self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2,
# final_layer_norm}; heads.I (Linear); the codebooks as _codebookI (running sums, V x D) and _codebook_cntsI
# (running counts), the same statistics as ours; the EMA teacher (the transformer only) as the dict `_ema`; and,
# after the CNN freeze, _pre_encoder_{cnn,ln,proj} copies, which inference does not use.

_FAIRSEQ_MARKER = "encoder.layers.0.self_attn.q_proj.weight"
_FAIRSEQ_NAMES = {  # fairseq DinoSR model cfg -> our ModelConfig; conv layers come from the tensor shapes
    "encoder_embed_dim": "embed_dim",
    "encoder_layers": "num_layers",
    "encoder_attention_heads": "num_heads",
    "encoder_ffn_embed_dim": "ffn_dim",
    "conv_bias": "conv_bias",
    "conv_pos": "pos_conv_kernel",
    "conv_pos_groups": "pos_conv_groups",
    "pos_conv_depth": "pos_conv_depth",
    "dropout": "dropout",
    "attention_dropout": "attention_dropout",
    "activation_dropout": "ffn_dropout",
    "dropout_input": "projection_dropout",
    "encoder_layerdrop": "layer_drop",
    "average_top_k_layers": "num_codebooks",
    "codebook_size": "codebook_size",
    "codebook_init_decay": "codebook_decay",
}
_FAIRSEQ_LAYER = {"self_attn.out_proj": "attention.proj", "self_attn_layer_norm": "layer_norm",
                  "fc1": "feed_forward.intermediate_dense", "fc2": "feed_forward.output_dense",
                  "final_layer_norm": "final_layer_norm"}


def is_fairseq_dinosr(obj: Any) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("model"), dict) and _FAIRSEQ_MARKER in obj["model"]
            and "post_extract_proj.weight" in obj["model"])


def _fairseq_transformer(params: dict[str, torch.Tensor], prefix: str, ours: str) -> dict[str, torch.Tensor]:
    """fairseq TransformerEncoder tensors (keys after `prefix`) in our Transformer layout under `ours`."""
    out: dict[str, torch.Tensor] = {}
    layer_rx = re.compile(rf"^{re.escape(prefix)}layers\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in params.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if m := re.match(r"^pos_conv\.(\d+)\.0\.(weight|bias)$", rest):
            out[f"{ours}.pos_conv_embed.convs.{m[1]}.{m[2]}"] = value
        elif rest in ("layer_norm.weight", "layer_norm.bias"):
            out[f"{ours}.{rest}"] = value
        elif (m := layer_rx.match(key)) and m[2] in _FAIRSEQ_LAYER:
            out[f"{ours}.layers.{m[1]}.{_FAIRSEQ_LAYER[m[2]]}.{m[3]}"] = value
        elif m and m[2] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            pass  # fused below
        else:
            out[f"unconverted:{key}"] = value  # named by _load_state as an unexpected key
    for layer in sorted({int(m[1]) for k in params if (m := layer_rx.match(k))}):
        for part in ("weight", "bias"):
            qkv = [params.get(f"{prefix}layers.{layer}.self_attn.{n}_proj.{part}") for n in "qkv"]
            if all(t is not None for t in qkv):
                out[f"{ours}.layers.{layer}.attention.qkv.{part}"] = torch.cat(qkv, 0)  # our q, k, v order
    return out


def convert_fairseq_dinosr(obj: dict, path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The architecture and our state dict (student, heads, codebooks, teacher) of an official DinoSR checkpoint.

    The architecture comes from the checkpoint's own `cfg.model` (the head count is never guessed). Without a
    teacher (`_ema`) in the file, the teacher is a copy of the student (inference never uses it); pos_conv, which
    DinoSR copies from the student instead of averaging (ema_layers_only), comes from the student when absent.
    """
    path = Path(path)
    model_cfg = (obj.get("cfg") or {}).get("model") if isinstance(obj.get("cfg"), dict) else None
    if not isinstance(model_cfg, dict):
        raise CheckpointError(f"{path}: a fairseq DinoSR checkpoint without its cfg.model dict (an old `args` "
                              "checkpoint?): re-save it with fairseq as {'cfg': {'model': <the model config as a "
                              "dict>}, 'model': <state dict>}")
    if model_cfg.get("extractor_mode", "layer_norm") != "layer_norm" or model_cfg.get("layer_norm_first"):
        raise CheckpointError(f"{path}: only extractor_mode=layer_norm, post-LN DinoSR models are supported (got "
                              f"extractor_mode={model_cfg.get('extractor_mode')!r}, layer_norm_first="
                              f"{model_cfg.get('layer_norm_first')!r})")
    if int(model_cfg.get("pos_conv_depth", 1)) < 2:
        raise CheckpointError(f"{path}: pos_conv_depth={model_cfg.get('pos_conv_depth', 1)}; only DinoSR's "
                              "multi-layer positional convolution (pos_conv_depth > 1) is supported")
    if "encoder_attention_heads" not in model_cfg:
        raise CheckpointError(f"{path}: cfg.model has no encoder_attention_heads (the head count is not in any "
                              "tensor shape, so it is never guessed)")
    values = {ours: model_cfg[theirs] for theirs, ours in _FAIRSEQ_NAMES.items() if theirs in model_cfg}
    values["extractor_mode"] = "layer_norm"
    values["qkv_bias"] = True  # fairseq's MultiheadAttention always has q/k/v biases
    src = obj["model"]
    state: dict[str, torch.Tensor] = {}
    teacher = src.get("_ema")
    for key, value in src.items():
        if key == "_ema" or key.startswith("_pre_encoder_") or key.startswith("encoder."):
            continue
        if m := re.match(r"^feature_extractor\.conv_layers\.(\d+)\.(0|2\.1)\.(weight|bias)$", key):
            state[f"feature_extractor.conv_layers.{m[1]}.{'conv' if m[2] == '0' else 'layer_norm'}.{m[3]}"] = value
        elif m := re.match(r"^(layer_norm|post_extract_proj)\.(weight|bias)$", key):
            state[f"feature_projection.{'layer_norm' if m[1] == 'layer_norm' else 'projection'}.{m[2]}"] = value
        elif key == "mask_emb":
            state["mask_embedding"] = value
        elif m := re.match(r"^heads\.(\d+)\.(weight|bias)$", key):
            state[f"heads.{m[1]}.0.{m[2]}"] = value
        elif m := re.match(r"^_codebook(_cnts)?(\d+)$", key):
            state[f"codebooks.{m[2]}.{'counts' if m[1] else 'codebook'}"] = value.float()
        else:
            state[f"unconverted:{key}"] = value
    student = _fairseq_transformer(src, "encoder.", "student")
    state.update(student)
    if isinstance(teacher, dict):
        state.update(_fairseq_transformer({f"encoder.{k}": v for k, v in teacher.items()}, "encoder.", "teacher"))
    for key, value in student.items():  # absent teacher tensors: the student's (see the docstring)
        state.setdefault("teacher" + key[len("student"):], value.clone())
    state["current_step"] = torch.zeros(1, dtype=torch.int64)
    try:
        n_conv = _count(state, r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight")
        kernels = [state[f"feature_extractor.conv_layers.{i}.conv.weight"].shape[2] for i in range(n_conv)]
        channels = [state[f"feature_extractor.conv_layers.{i}.conv.weight"].shape[0] for i in range(n_conv)]
    except KeyError as err:
        raise CheckpointError(f"{path}: fairseq DinoSR layout incomplete, missing key {err}") from err
    if kernels != [k for _, k, _ in PAPER_CONV_LAYERS]:
        raise CheckpointError(f"{path}: conv kernels {kernels} differ from wav2vec 2.0's; strides unknown")
    values["conv_layers"] = [(c, k, s) for c, (_, k, s) in zip(channels, PAPER_CONV_LAYERS, strict=True)]
    try:
        return model_config_from_dict(values), state
    except ConfigError as err:
        raise CheckpointError(f"{path}: cannot build a model from its cfg.model ({err})") from err


def convert_official_dinosr(src: str | Path, out: str | Path) -> None:
    """Write an official DinoSR (fairseq) checkpoint in our format (loadable by `load_model` either way)."""
    model = load_model(src, kind="dinosr")
    save_model(model, out, converted_from=str(src))


def load_encoder(path: str | Path, map_location: str | torch.device = "cpu", *, kind: str | None = None) -> DinoSR:
    """The inference model (student, heads, codebooks; no teacher) from our checkpoint or an official file (eval)."""
    return load_model(path, map_location, kind=kind, teacher=False)


def _load_state(model: DinoSR, state: dict[str, torch.Tensor], path: Path, *, teacher: bool) -> None:
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if not teacher:  # the file must still hold a teacher of the right shape
        for k, v in model.student.state_dict().items():
            expected[f"teacher.{k}"] = v.shape
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: not a {model.kind} checkpoint of this architecture: "
            f"{_few(missing)} missing key(s), {_few(unexpected)} unexpected key(s)"
        )
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(s)})" for k, s in expected.items() if state[k].shape != s]
    if wrong:
        raise CheckpointError(f"{path}: tensor shapes do not match the architecture: {_few(wrong)}")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: state dict holds non-tensor values")
    model.load_state_dict({k: v for k, v in state.items() if teacher or not k.startswith("teacher.")}, strict=True)


def _few(items: list[str], n: int = 8) -> str:
    if not items:
        return "no"
    shown = ", ".join(items[:n])
    return f"{len(items)} [{shown}{', ...' if len(items) > n else ''}]"


def _official_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        state = obj["model"]
    elif isinstance(obj, dict):
        state = obj
    else:
        raise CheckpointError(
            f"{path}: expected a dict (our checkpoint, or an official state dict), got {type(obj).__name__}"
        )
    if any(str(k).startswith("encoder.") for k in state) or "cfg" in obj or "args" in obj:
        raise CheckpointError(
            f"{path}: looks like a fairseq checkpoint (keys {_few(sorted(map(str, state))[:3], 3)}) but not the "
            "official DinoSR one (no encoder.layers.0.self_attn.q_proj / post_extract_proj); only that, the official "
            "SpidR/DinoSR release layout and our own format are supported"
        )
    if all(isinstance(k, str) and k.startswith("module.") for k in state):  # saved from a DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    if _MARKER_KEY not in state:
        raise CheckpointError(
            f"{path}: neither our checkpoint format nor the official SpidR/DinoSR layout: missing key "
            f"{_MARKER_KEY!r}; found {_few(sorted(map(str, state)))} key(s)"
        )
    return state


def _sibling_official_config(path: Path) -> dict | None:
    """The official `config.json` next to a release file (the dumped official Config), if there is one."""
    cfg_path = path.with_name("config.json")
    if not cfg_path.is_file():
        return None
    try:
        data = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("model"), dict) and "encoder_embed_dim" in data["model"]:
        return data
    if isinstance(data, dict) and "encoder_embed_dim" in data:  # flat DinoSRConfig dump
        return {"model": data}
    return None


_OFFICIAL_NAMES = {  # official DinoSRConfig field -> ours
    "extractor_mode": "extractor_mode",
    "extractor_conv_layer_config": "conv_layers",
    "extractor_conv_bias": "conv_bias",
    "encoder_embed_dim": "embed_dim",
    "encoder_num_layers": "num_layers",
    "encoder_num_heads": "num_heads",
    "encoder_ff_interm_features": "ffn_dim",
    "encoder_qkv_bias": "qkv_bias",
    "encoder_pos_conv_kernel": "pos_conv_kernel",
    "encoder_pos_conv_groups": "pos_conv_groups",
    "encoder_pos_conv_depth": "pos_conv_depth",
    "encoder_dropout": "dropout",
    "encoder_attention_dropout": "attention_dropout",
    "encoder_ff_interm_dropout": "ffn_dropout",
    "encoder_projection_dropout": "projection_dropout",
    "encoder_layer_drop": "layer_drop",
    "num_codebooks": "num_codebooks",
    "codebook_size": "codebook_size",
    "codebook_decay": "codebook_decay",
}


def _official_kind(path: Path, official: dict | None) -> str:
    if official is not None:
        kind = (official.get("run") or {}).get("model_type")
        if kind in MODELS:
            return kind
    return "dinosr" if "dinosr" in path.name.lower() else "spidr"


def _count(state: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def _infer_config(state: dict[str, torch.Tensor], path: Path, official: dict | None) -> ModelConfig:
    """The architecture of an official state dict: from its config.json when present, else from tensor shapes."""
    values: dict[str, Any] = {}
    if official is not None:
        m = official["model"]
        if m.get("encoder_layer_norm_first", False):
            raise CheckpointError(f"{path.with_name('config.json')}: only post-LN models are supported")
        values = {ours: m[theirs] for theirs, ours in _OFFICIAL_NAMES.items() if theirs in m}
    try:
        n_conv = _count(state, r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight")
        convs = [tuple(state[f"feature_extractor.conv_layers.{i}.conv.weight"].shape) for i in range(n_conv)]
        if "conv_layers" not in values:
            kernels = [k for _, _, k in convs]
            if kernels != [k for _, k, _ in PAPER_CONV_LAYERS]:
                raise CheckpointError(f"{path}: conv kernels {kernels} differ from the paper's; strides unknown "
                                      "(put the official config.json next to the file)")
            values["conv_layers"] = [(o, k, s) for (o, _, k), (_, _, s) in zip(convs, PAPER_CONV_LAYERS, strict=True)]
        values.setdefault("conv_bias", "feature_extractor.conv_layers.0.conv.bias" in state)
        later_norm = n_conv > 1 and "feature_extractor.conv_layers.1.layer_norm.weight" in state
        values.setdefault("extractor_mode", "layer_norm" if later_norm or n_conv == 1 else "group_norm")
        d = state["feature_projection.projection.weight"].shape[0]
        values.setdefault("embed_dim", d)
        values.setdefault("num_layers", _count(state, r"student\.layers\.(\d+)\."))
        if "num_heads" not in values:
            raise CheckpointError(f"{path.with_name('config.json')}: no encoder_num_heads (the head count is not in "
                                  "any tensor shape; add it from the release's config)")
        values.setdefault("ffn_dim", state["student.layers.0.feed_forward.intermediate_dense.weight"].shape[0])
        values.setdefault("qkv_bias", "student.layers.0.attention.qkv.bias" in state)
        depth = _count(state, r"student\.pos_conv_embed\.convs\.(\d+)\.weight")
        pw = state["student.pos_conv_embed.convs.0.weight"].shape
        values.setdefault("pos_conv_depth", depth)
        values.setdefault("pos_conv_groups", d // pw[1])
        values.setdefault("pos_conv_kernel", pw[2] * depth)
        values.setdefault("num_codebooks", _count(state, r"heads\.(\d+)\.0\.weight"))
        values.setdefault("codebook_size", state["heads.0.0.weight"].shape[0])
    except KeyError as err:
        raise CheckpointError(f"{path}: official layout incomplete, missing key {err}") from err
    try:
        return model_config_from_dict(values)
    except ConfigError as err:
        raise CheckpointError(f"{path}: cannot build a model from it ({err})") from err
