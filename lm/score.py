"""Unit-LM scoring: log-likelihoods of unit sequences (API) and `python -m lm.score` over a units file (TSV out).

Conventions (also written beside every score file): each sequence is scored as `<bos> u_1 ... u_n <eos>`; `<bos>`
is context only (never scored), the n units and, by default, `<eos>` are scored (as slamkit and the ZeroSpeech
2021 LSTM baseline). `sum` is the total log-probability (natural log) of the scored tokens; `mean` divides it by
their number (n + 1 with `<eos>`, n without), as the SpidR paper and slamkit do. The model is the best one (lowest
validation loss: MODEL_DIR itself) unless `model: last` picks the final weights (MODEL_DIR/last).

Batching: sequences are grouped by a padded length that depends only on their own length (a multiple of
`PAD_MULTIPLE`), padded on the right and masked, and run in fp32. A sequence therefore goes through exactly the
same computation whatever else is in its batch, so batched scores equal one-at-a-time scores bit for bit on CPU.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import pickle
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM

from common.artefacts import ArtefactError, corrupt
from common.config import loads
from common.io import atomic_write, atomic_write_json, provenance
from lm.config import MANY_EPOCHS, ScoreConfig
from lm.model import UnitVocab, document_causal_mask
from units.format import iter_units, read_units_meta

PAD_MULTIPLE = 16
NORMALISATIONS = ("mean", "sum")
MEMORY_HINT = "lower --batch-size (sequences per batch, default 64; scores do not depend on it)"
# What makes two units files the same units: an LM trained on one scores only the other when these agree.
UNITS_IDENTITY = ("encoder", "layer", "quantizer", "vocab_size", "kmeans_sha256")


class ScoreError(ValueError):
    """Units and an LM that cannot be scored together, or a scoring request that makes no sense."""


def load_lm(model_dir: str | Path, device: str | torch.device | None = None) -> torch.nn.Module:
    """A trained unit LM in eval mode, fp32, on `device` (default: CUDA when present, else CPU)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(errno.ENOENT, "unit-LM directory not found (lm.train writes it)", str(model_dir))
    vocab = UnitVocab.load(model_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    except OSError:
        raise  # a missing file: transformers' message names it
    except pickle.UnpicklingError as err:  # a pickled .bin that torch.load(weights_only=True) refused
        found = re.search(r"GLOBAL (\S+)", str(err))
        binary = next(iter(sorted(model_dir.glob("*.bin"))), model_dir)
        raise ArtefactError(
            f"{binary}: unit-LM weights hold Python objects that torch.load(weights_only=True) refuses to build"
            f"{f' ({found.group(1)})' if found else ''}, so they were not loaded and none of their code ran; "
            f"lm.train writes model.safetensors: delete {model_dir} and rerun the rule that trains it (train_lm)"
        ) from None
    except Exception as err:  # SafetensorError, JSONDecodeError, ...: a file cut short or damaged
        name = "model.safetensors" if "safetensor" in type(err).__name__.lower() else \
            "config.json" if isinstance(err, json.JSONDecodeError) else ""
        raise corrupt(model_dir / name, "unit-LM file", err, f"delete {model_dir} and rerun the rule that trains "
                      "it (train_lm, `python -m lm.train`)") from err
    if (model.config.vocab_size, model.config.bos_token_id, model.config.eos_token_id) != (
            vocab.size, vocab.bos_id, vocab.eos_id):
        raise ScoreError(f"{model_dir}: config.json special tokens / vocab size disagree with unit_vocab.json")
    return model.to(device).eval()


def _padded_length(n_inputs: int) -> int:
    return PAD_MULTIPLE * math.ceil(n_inputs / PAD_MULTIPLE)


@torch.no_grad()
def score_sequences(model: torch.nn.Module, sequences: Sequence[Sequence[int]], normalisation: str = "mean",
                    batch_size: int = 64, eos: bool = True) -> np.ndarray:
    """Log-likelihood of each unit sequence (float64 array in input order); conventions in the module docstring."""
    if normalisation not in NORMALISATIONS:
        raise ScoreError(f"normalisation must be one of {NORMALISATIONS}, got {normalisation!r}")
    config = model.config
    bos, eos_id, pad = config.bos_token_id, config.eos_token_id, config.pad_token_id
    num_units = min(bos, eos_id, pad)  # units come first in the vocabulary, specials after
    device = next(model.parameters()).device
    max_len = getattr(config, "max_position_embeddings", None)
    tokens = []
    for i, seq in enumerate(sequences):
        units = np.asarray(seq, dtype=np.int64).reshape(-1)
        if units.size and (units.min() < 0 or units.max() >= num_units):
            raise ScoreError(f"sequence {i}: unit ids must be in [0, {num_units}), got {units.min()}..{units.max()}")
        if not eos and units.size == 0:
            raise ScoreError(f"sequence {i} is empty: without <eos> it has no scored token")
        seq_tokens = np.concatenate([[bos], units, [eos_id]] if eos else [[bos], units])
        if max_len is not None and len(seq_tokens) - 1 > max_len:
            raise ScoreError(f"sequence {i}: {len(seq_tokens) - 1} positions exceed the model's {max_len}")
        tokens.append(seq_tokens)
    scores = np.zeros(len(tokens), dtype=np.float64)
    # Bucket by padded length (longest first, so an out-of-memory error shows up at once).
    padded = np.array([_padded_length(len(t) - 1) for t in tokens], dtype=np.int64)
    order = np.lexsort((np.arange(len(tokens)), -padded))
    for length in np.unique(padded)[::-1]:
        members = order[padded[order] == length]
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            ids = torch.full((len(chunk), int(length) + 1), pad, dtype=torch.long)
            for row, k in enumerate(chunk):
                ids[row, :len(tokens[k])] = torch.from_numpy(tokens[k])
            inputs, targets = ids[:, :-1].to(device), ids[:, 1:].to(device)
            n_scored = torch.tensor([len(tokens[k]) - 1 for k in chunk], device=device)
            positions = torch.arange(int(length), device=device).expand(len(chunk), -1)
            scored = positions < n_scored[:, None]
            # An explicit mask in every batch (padding tokens are one-token documents) keeps the attention kernel
            # the same whether or not a batch holds padding.
            mask = document_causal_mask(torch.where(scored, positions, 0), model.config._attn_implementation)
            logits = model(input_ids=inputs, position_ids=positions, attention_mask=mask, use_cache=False).logits
            logits = logits.float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
            sums = torch.where(scored, logp, 0.0).double().sum(dim=1).cpu().numpy()
            scores[chunk] = sums / n_scored.cpu().numpy() if normalisation == "mean" else sums
    return scores


def units_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What units a units file holds (UNITS_IDENTITY), from its metadata: the extraction's config, found through
    the `source` provenance of a deduplicated file. Keys a file does not record are left out."""
    prov = meta.get("provenance") or {}
    while "source" in prov and "encoder" not in (prov.get("config") or {}):
        prov = prov["source"] or {}
    config = prov.get("config") or {}
    identity = {k: config[k] for k in UNITS_IDENTITY if k in config}
    identity["vocab_size"] = meta.get("vocab_size")
    return identity


def units_mismatch(trained: dict[str, Any], scored: dict[str, Any]) -> str:
    """The keys on which the LM's training units and the scored units differ ('' when they agree on every key
    both record), e.g. `kmeans_sha256: 3f2a... (LM) vs 9c1b... (scored)`."""
    a, b = units_identity(trained), units_identity(scored)
    if not trained:
        return ""  # an LM directory without provenance (written by hand): only vocab_size can be checked
    diff = [f"{k}: {a[k]} (LM) vs {b[k]} (scored)" for k in UNITS_IDENTITY if k in a and k in b and a[k] != b[k]]
    return "; ".join(diff)


def epochs_warning(training: dict[str, Any], model_dir: Path) -> str | None:
    """A warning when the LM made many passes over a small training set (it then memorises its corpus)."""
    epochs = training.get("epochs")
    if not isinstance(epochs, int | float) or epochs <= MANY_EPOCHS:
        return None
    return (f"{model_dir}: the LM made {epochs:.0f} passes over its training blocks ({training.get('train_blocks')} "
            "blocks): a corpus this small is memorised, so its validation loss and scores say little; train on more "
            "units or lower max_steps / set max_epochs in its train config")


def select_model(model_dir: str | Path, which: str = "best") -> Path:
    """The directory of lm.train's `best` model (MODEL_DIR) or of its `last` (final) one (MODEL_DIR/last)."""
    model_dir = Path(model_dir)
    if which == "best":
        return model_dir
    if which != "last":
        raise ScoreError(f"'model': {which!r}; expected best or last")
    if not (model_dir / "last").is_dir():
        raise FileNotFoundError(errno.ENOENT, f"no final model in {model_dir} (written by an older lm.train; "
                                "rerun train_lm, or score with model: best)", str(model_dir / "last"))
    return model_dir / "last"


def score_units_file(model_dir: str | Path, units: str | Path, out: str | Path, normalisation: str = "mean",
                     batch_size: int = 64, eos: bool = True, device: str | None = None,
                     chunk_utterances: int = 8192, which: str = "best", allow_mismatch: bool = False) -> None:
    """Write `id<TAB>score` for every utterance of a units file, plus the conventions in `<out>.json`."""
    out, trained = Path(out), Path(model_dir)
    model_dir = select_model(trained, which)
    meta = read_units_meta(units)
    model = load_lm(model_dir, device)
    vocab = UnitVocab.load(model_dir)
    if int(meta["vocab_size"]) != vocab.num_units:
        raise ScoreError(f"{units}: vocab_size {meta['vocab_size']} differs from the LM's {vocab.num_units} units "
                         f"({model_dir}): score units of the units config the LM was trained on")
    lm_info: dict[str, Any] = json.loads((trained / "provenance.json").read_text()) \
        if (trained / "provenance.json").is_file() else {}
    mismatch = units_mismatch(lm_info.get("units_meta") or {}, meta)
    if mismatch and not allow_mismatch:
        raise ScoreError(f"{units}: not the units the LM {trained} was trained on ({mismatch}); score units of that "
                         "units config, or pass --allow-units-mismatch to score them anyway (the score file and the "
                         "report then say so)")
    count = 0
    # The TSV, the declared output, appears last (when the outer `with` ends), after its conventions sidecar.
    with atomic_write(out) as tmp:
        with tmp.open("w") as f:
            ids: list[str] = []
            seqs: list[np.ndarray] = []

            def flush() -> None:
                for uid, score in zip(ids, score_sequences(model, seqs, normalisation, batch_size, eos), strict=True):
                    f.write(f"{uid}\t{float(score)!r}\n")  # shortest repr that round-trips
                ids.clear()
                seqs.clear()

            for row in iter_units(units):  # the `units` column: deduplicated files score their deduplicated units
                ids.append(row["id"])
                seqs.append(row["units"])
                count += 1
                if len(ids) == chunk_utterances:
                    flush()
            flush()
        training = lm_info.get("training", {})
        warnings = [w for w in [epochs_warning(training, trained)] if w]
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        chosen = (f"best: lowest validation loss {training.get('best_valid_loss')} at step "
                  f"{training.get('best_step')} of {training.get('steps')}") if which == "best" else \
            f"last: the final weights (step {training.get('steps')})"
        atomic_write_json(out.with_name(out.name + ".json"), {
            **provenance({"model": str(model_dir), "units": str(units), "normalisation": normalisation,
                          "eos": eos, "batch_size": batch_size, "which": which}),
            "conventions": {"normalisation": normalisation, "log_base": "e", "model": chosen,
                            "bos": "prepended, context only (not scored)",
                            "eos": "appended and scored" if eos else "not appended",
                            "scored_tokens": "n units + 1 (eos)" if eos else "n units",
                            "units": "the `units` column (deduplicated when the file is)",
                            **({"units_mismatch": f"scored anyway (--allow-units-mismatch): {mismatch}"}
                               if mismatch else {})},
            "utterances": count, "units_meta": meta, "warnings": warnings,
            "lm_code_version": lm_info.get("code_version"), "lm_config": lm_info.get("config")})
    print(f"lm.score: wrote {count} scores to {out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="unit-LM directory written by lm.train")
    parser.add_argument("--units", required=True, help="units file to score (Parquet, units.format)")
    parser.add_argument("--out", required=True, help="TSV of `id<TAB>score` lines; conventions go to OUT.json")
    parser.add_argument("--config", default="{}",
                        help='lm.config.ScoreConfig JSON: {"normalisation": "mean"|"sum", "eos": true|false, '
                        '"model": "best"|"last"}')
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--allow-units-mismatch", action="store_true",
                        help="score units that differ from the LM's training units (encoder, layer, quantizer, "
                        "k-means); recorded in the conventions, so the report marks the scores")
    args = parser.parse_args(argv)
    cfg = loads(ScoreConfig, args.config)
    score_units_file(args.model, args.units, args.out, cfg.normalisation, args.batch_size, cfg.eos, args.device,
                     which=cfg.model, allow_mismatch=args.allow_units_mismatch)


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main, memory_hint=MEMORY_HINT)
