"""Unit-LM data: deduplicated units -> train/valid split by utterance -> memory-mapped token arrays -> packed blocks.

Every utterance becomes `<bos> u_1 ... u_n <eos>` in one flat token array per split (a `.npy` memory map built
once, streaming, in the work directory), with the start offset of every utterance beside it. Training reads
fixed-length blocks cut from that stream, so no token is padding except in the very last block.

Document boundaries: by default no token attends across utterances. Position ids restart at 0 at every utterance
start and at every block start (a block that begins inside an utterance sees only that utterance's remainder),
and `lm.model.document_attention_mask` turns those restarts into a block-diagonal causal mask. The prediction of the
next utterance's `<bos>` from an `<eos>` is never a target. With `cross_document_attention` the `<bos>`/`<eos>`
separators alone mark boundaries (plain causal attention, positions 0..T-1), which is faster on GPU.

The split is decided per utterance id by a seeded hash, so it does not depend on file order or corpus size, and
the block order is a seeded Feistel permutation per epoch computed on the fly: memory stays flat with corpus size.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from common.io import atomic_write
from lm.model import UnitVocab
from units.format import UnitsFileError, read_units_meta

DATA_FORMAT = 1
IGNORE_INDEX = -100
SPLITS = ("train", "valid")


def split_key(uid: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, utterance id): the utterance is in valid iff below the fraction."""
    digest = hashlib.blake2b(f"{seed}\0{uid}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class LMDataError(ValueError):
    """Units that cannot be packed for the LM, or packed data that do not match the config; names the file."""


@dataclass(frozen=True)
class TokenArrays:
    """One split: `tokens[doc_starts[i]:doc_starts[i+1]]` is utterance i as `<bos> units <eos>`."""

    tokens: np.ndarray
    doc_starts: np.ndarray

    @property
    def num_docs(self) -> int:
        return len(self.doc_starts) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)


def units_fingerprint(units_path: Path) -> dict[str, Any]:
    # Size + mtime identify a rewritten file (the units stage writes atomically) without hashing gigabytes.
    stat = units_path.stat()
    return {"path": str(units_path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _token_dtype(vocab: UnitVocab) -> np.dtype:
    return np.dtype(np.uint16) if vocab.size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.int32)


def _batches(units_path: Path, batch_size: int = 8192):
    try:
        parquet = pq.ParquetFile(units_path)
    except Exception as err:
        raise UnitsFileError(f"{units_path}: not a readable Parquet file ({err})") from err
    missing = {"id", "units"} - set(parquet.schema_arrow.names)
    if missing:
        raise UnitsFileError(f"{units_path}: units file lacks column(s) {sorted(missing)}")
    for batch in parquet.iter_batches(columns=["id", "units"], batch_size=batch_size):
        if batch.column("units").null_count:
            raise UnitsFileError(f"{units_path}: null `units` entries in the units file")
        yield batch.column("id").to_pylist(), batch.column("units")


def _assign_splits(units_path: Path, valid_fraction: float, seed: int) -> tuple[dict[str, list[int]], str | None]:
    """Pass 1: per split the number of utterances and tokens; plus an id forced into valid when none fell there."""
    counts = {split: [0, 0] for split in SPLITS}
    best: tuple[float, str, int] | None = None
    for ids, units in _batches(units_path):
        lengths = pc.list_value_length(units).to_numpy(zero_copy_only=False) + 2
        keys = np.array([split_key(uid, seed) for uid in ids])
        is_valid = keys < valid_fraction
        for split, sel in (("train", ~is_valid), ("valid", is_valid)):
            counts[split][0] += int(sel.sum())
            counts[split][1] += int(lengths[sel].sum())
        if len(keys):
            i = int(keys.argmin())
            if best is None or keys[i] < best[0]:
                best = (float(keys[i]), ids[i], int(lengths[i]))
    forced = None
    total_docs = counts["train"][0] + counts["valid"][0]
    if valid_fraction > 0 and counts["valid"][0] == 0 and total_docs >= 2 and best is not None:
        # A tiny corpus whose hashes all landed in train: move the utterance with the smallest key.
        forced = best[1]
        counts["train"][0] -= 1
        counts["train"][1] -= best[2]
        counts["valid"] = [1, best[2]]
    if counts["train"][0] == 0:
        raise LMDataError(f"{units_path}: no training utterances ({total_docs} in the file, "
                          f"valid_fraction={valid_fraction})")
    return counts, forced


def _fill(units_path: Path, out_dir: Path, vocab: UnitVocab, valid_fraction: float, seed: int,
          counts: dict[str, list[int]], forced: str | None) -> None:
    """Pass 2: write each split's token stream and utterance offsets into preallocated .npy memory maps."""
    dtype = _token_dtype(vocab)
    tokens = {s: np.lib.format.open_memmap(out_dir / f"{s}_tokens.npy", mode="w+", dtype=dtype,
                                           shape=(counts[s][1],)) for s in SPLITS}
    starts = {s: np.lib.format.open_memmap(out_dir / f"{s}_doc_starts.npy", mode="w+", dtype=np.int64,
                                           shape=(counts[s][0] + 1,)) for s in SPLITS}
    tok_cursor = dict.fromkeys(SPLITS, 0)
    doc_cursor = dict.fromkeys(SPLITS, 0)
    for ids, units in _batches(units_path):
        is_valid = np.array([split_key(uid, seed) < valid_fraction or uid == forced for uid in ids], dtype=bool)
        for split, sel in (("train", ~is_valid), ("valid", is_valid)):
            if not sel.any():
                continue
            chosen = units.filter(pa.array(sel))
            lengths = pc.list_value_length(chosen).to_numpy(zero_copy_only=False).astype(np.int64)
            flat = pc.list_flatten(chosen).to_numpy(zero_copy_only=False)
            if flat.size and (flat.min() < 0 or flat.max() >= vocab.num_units):
                owner = np.repeat(np.flatnonzero(sel), lengths)
                bad = int(np.flatnonzero((flat < 0) | (flat >= vocab.num_units))[0])
                raise UnitsFileError(f"{units_path}: utterance {ids[owner[bad]]!r} has unit {int(flat[bad])} "
                                     f"outside [0, {vocab.num_units}) (vocab_size from the file metadata)")
            local = np.concatenate([[0], np.cumsum(lengths + 2)[:-1]])
            buffer = np.empty(int((lengths + 2).sum()), dtype=dtype)
            is_unit = np.ones(len(buffer), dtype=bool)
            is_unit[local] = False
            is_unit[local + lengths + 1] = False
            buffer[local] = vocab.bos_id
            buffer[local + lengths + 1] = vocab.eos_id
            buffer[is_unit] = flat
            t0, d0 = tok_cursor[split], doc_cursor[split]
            tokens[split][t0:t0 + len(buffer)] = buffer
            starts[split][d0:d0 + len(lengths)] = t0 + local
            tok_cursor[split] += len(buffer)
            doc_cursor[split] += len(lengths)
    for split in SPLITS:
        starts[split][-1] = tok_cursor[split]
        tokens[split].flush()
        starts[split].flush()


def prepare_token_arrays(units_path: str | Path, data_dir: str | Path, *, valid_fraction: float,
                         seed: int) -> tuple[dict[str, TokenArrays], dict[str, Any]]:
    """Build (once) and open the memory-mapped token arrays of both splits; rebuilt when the inputs change."""
    units_path, data_dir = Path(units_path), Path(data_dir)
    if not 0.0 <= valid_fraction < 1.0:
        raise LMDataError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    vocab = UnitVocab(int(read_units_meta(units_path)["vocab_size"]))
    key = {"format": DATA_FORMAT, "units": units_fingerprint(units_path), "vocab_size": vocab.num_units,
           "valid_fraction": valid_fraction, "seed": seed}
    meta_path = data_dir / "meta.json"
    if not (meta_path.is_file() and json.loads(meta_path.read_text()).get("key") == key):
        with atomic_write(data_dir) as tmp:  # a failure (full disk, Ctrl-C) leaves neither a tmp nor half a folder
            tmp.mkdir()
            counts, forced = _assign_splits(units_path, valid_fraction, seed)
            _fill(units_path, tmp, vocab, valid_fraction, seed, counts, forced)
            stats = {s: {"utterances": counts[s][0], "tokens": counts[s][1]} for s in SPLITS}
            units_meta = read_units_meta(units_path)
            meta = {"key": key, "stats": stats, "units_meta": units_meta}  # provenance of the LM trained on it
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
            shutil.rmtree(data_dir, ignore_errors=True)  # a folder is replaced by a rename only once it is gone
    arrays, meta = open_token_arrays(data_dir, valid_fraction=valid_fraction, seed=seed)
    return arrays, meta["stats"]


def open_token_arrays(data_dir: str | Path, *, valid_fraction: float | None = None,
                      seed: int | None = None) -> tuple[dict[str, TokenArrays], dict[str, Any]]:
    """Open packed arrays (`python -m lm.pack` or `prepare_token_arrays`); refuse them if packed with another split.

    Returns the arrays of both splits and the folder's meta.json (`key`: what they were built from, `stats`).
    """
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{data_dir}: no packed LM data ({meta_path.name} is missing); build it with "
                                f"`python -m lm.pack --units UNITS.parquet --out {data_dir} --config JSON`")
    meta = json.loads(meta_path.read_text())
    key = meta.get("key", {})
    if key.get("format") != DATA_FORMAT:
        raise LMDataError(f"{meta_path}: packed with data format {key.get('format')!r}, this code reads "
                          f"{DATA_FORMAT}; pack it again with `python -m lm.pack`")
    for name, wanted in (("valid_fraction", valid_fraction), ("seed", seed)):
        if wanted is not None and key.get(name) != wanted:
            raise LMDataError(f"{meta_path}: packed with {name}={key.get(name)!r}, but the config says {wanted!r}; "
                              f"pack it again with this config (`python -m lm.pack`)")
    arrays = {s: TokenArrays(np.load(data_dir / f"{s}_tokens.npy", mmap_mode="r"),
                             np.load(data_dir / f"{s}_doc_starts.npy", mmap_mode="r")) for s in SPLITS}
    return arrays, meta


class PackedBlocks:
    """Fixed-length training blocks over one split's token stream (block i starts at token i * block_len)."""

    def __init__(self, arrays: TokenArrays, block_len: int, vocab: UnitVocab,
                 cross_document_attention: bool = False) -> None:
        self.tokens, self.doc_starts = arrays.tokens, arrays.doc_starts
        self.block_len = block_len
        self.vocab = vocab
        self.cross_document_attention = cross_document_attention

    def __len__(self) -> int:
        # Each block needs one token beyond its end as the last target; the final block may be partial.
        return math.ceil((len(self.tokens) - 1) / self.block_len) if len(self.tokens) > 1 else 0

    def num_targets(self, block_ids: np.ndarray) -> int:
        """Targets (non-ignored labels) in these blocks, from the utterance offsets alone (no token is read)."""
        begin = np.asarray(block_ids, dtype=np.int64) * self.block_len
        end = np.minimum(begin + self.block_len, len(self.tokens) - 1)  # inputs j in [begin, end) have a next token
        # every such j is a target unless j + 1 starts the next utterance
        starts = np.searchsorted(self.doc_starts, end, side="right") - np.searchsorted(self.doc_starts, begin + 1)
        return int(np.sum(end - begin - starts))

    def batch(self, block_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """input_ids, labels (IGNORE_INDEX where not a target) and position_ids, each [len(block_ids), block_len]."""
        length, n = self.block_len, len(self.tokens)
        begin = np.asarray(block_ids, dtype=np.int64)[:, None] * length
        index = begin + np.arange(length + 1)
        inside = index < n
        clipped = np.minimum(index, n - 1)
        window = self.tokens[clipped].astype(np.int64)
        window[~inside] = self.vocab.pad_id
        doc = np.searchsorted(self.doc_starts, clipped, side="right") - 1
        same_doc = (doc[:, 1:] == doc[:, :-1]) & inside[:, 1:]
        labels = np.where(same_doc, window[:, 1:], IGNORE_INDEX)
        if self.cross_document_attention:
            positions = np.broadcast_to(np.arange(length), (len(begin), length)).copy()
        else:
            start = np.maximum(self.doc_starts[doc[:, :length]], begin)
            positions = index[:, :length] - start
            positions[~inside[:, :length]] = 0  # each padding token is its own one-token "document"
        return {"input_ids": torch.from_numpy(window[:, :length]), "labels": torch.from_numpy(labels),
                "position_ids": torch.from_numpy(positions)}


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def permute(index: np.ndarray, n: int, key: int, rounds: int = 4) -> np.ndarray:
    """A seeded bijection of [0, n) evaluated pointwise (Feistel network + cycle walking): O(1) memory shuffling."""
    if n <= 0:
        raise ValueError("cannot permute an empty range")
    half = max(1, math.ceil(math.log2(n) / 2)) if n > 1 else 1
    mask = np.uint64((1 << half) - 1)
    round_keys = [np.uint64(int.from_bytes(hashlib.blake2b(f"{key}:{r}".encode(), digest_size=8).digest(), "little"))
                  for r in range(rounds)]

    def encrypt(x: np.ndarray) -> np.ndarray:
        left, right = x >> np.uint64(half), x & mask
        for round_key in round_keys:
            left, right = right, left ^ (_splitmix64(right ^ round_key) & mask)
        return (left << np.uint64(half)) | right

    out = np.asarray(index, dtype=np.uint64).copy()
    if out.size and int(out.max()) >= n:
        raise ValueError(f"index out of range for a permutation of {n}")
    todo = np.ones(out.shape, dtype=bool)
    while todo.any():  # the domain is < 4n, so a few rounds of walking suffice
        out[todo] = encrypt(out[todo])
        todo = out >= np.uint64(n)
    return out.astype(np.int64)


def train_block_ids(global_indices: np.ndarray, num_blocks: int, seed: int) -> np.ndarray:
    """Block of the g-th training sequence: epoch g // num_blocks, shuffled freshly (and reproducibly) per epoch."""
    global_indices = np.asarray(global_indices, dtype=np.int64)
    epochs, offsets = np.divmod(global_indices, num_blocks)
    out = np.empty_like(global_indices)
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        out[sel] = permute(offsets[sel], num_blocks, key=seed * 1_000_003 + int(epoch))
    return out
