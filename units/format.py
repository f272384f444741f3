"""The on-disk format of discrete units: one Parquet file per (units config, corpus), one row per utterance.

Columns: `id` (string, the utterance id of the manifest), `units` (list<int32>) and, for deduplicated files,
`durations` (list<int32>, frames per unit; their sum is the utterance's frame count). The Parquet key-value
metadata key `textless` holds JSON: `vocab_size`, `frame_rate` (Hz), `deduplicated`, and `provenance`.
pandas reads it as is: `pd.read_parquet(path)`. Readers check the metadata (`check_meta`) and, per record batch,
that unit ids lie in [0, vocab_size) and durations match units, so a damaged or foreign file is one error naming
it, never an overflow or a huge allocation downstream.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.io import atomic_write, write_failure

META_KEY = b"textless"
MAX_VOCAB = 1 << 20  # far above any codebook or k-means K; a count matrix of this many units x phones fits in RAM
MAX_FRAME_RATE = 16000.0  # one frame per sample at 16 kHz
REMEDY = "delete it and rerun the rule that writes it (quantize / dedup)"
COLLAPSE_SHARE = 0.1  # fewer active units than this share of the vocabulary: warned in the log and the report


def collapse_warning(active: int, vocab_size: int, where: str) -> str | None:
    """A warning when few of the units are ever used (a collapsed codebook or k-means), else None."""
    if vocab_size < 8 or active >= COLLAPSE_SHARE * vocab_size:
        return None
    return (f"{where}: only {active} of {vocab_size} units are used (under {COLLAPSE_SHARE:.0%}): the units have "
            "collapsed, and every metric over them (and an LM's low loss) reflects a tiny alphabet; check the "
            "encoder's codebook usage during pretraining or the k-means fit")


class UnitsFileError(ValueError):
    """A units file that is missing, unreadable or not in the format above; the message names the file."""


def _schema(deduplicated: bool, meta: dict[str, Any]) -> pa.Schema:
    fields = [pa.field("id", pa.string()), pa.field("units", pa.list_(pa.int32()))]
    if deduplicated:
        fields.append(pa.field("durations", pa.list_(pa.int32())))
    return pa.schema(fields, metadata={META_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})


class UnitsWriter:
    """Streaming writer: memory stays flat whatever the corpus size; the file appears only on `close()`."""

    def __init__(self, path: str | Path, *, vocab_size: int, frame_rate: float = 50.0, deduplicated: bool = False,
                 provenance: dict[str, Any] | None = None, rows_per_group: int = 1024) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.deduplicated = deduplicated
        meta = {"vocab_size": int(vocab_size), "frame_rate": float(frame_rate), "deduplicated": deduplicated,
                "provenance": provenance or {}}
        self.schema = _schema(deduplicated, meta)
        self.writer = pq.ParquetWriter(self.tmp, self.schema)
        self.rows_per_group = rows_per_group
        self.buffer: list[dict[str, Any]] = []
        self.count = 0

    def write(self, uid: str, units: Iterable[int], durations: Iterable[int] | None = None) -> None:
        row: dict[str, Any] = {"id": uid, "units": np.asarray(units, dtype=np.int32)}
        if self.deduplicated:
            if durations is None:
                raise UnitsFileError(f"{self.path}: a deduplicated units file needs durations (utterance {uid})")
            row["durations"] = np.asarray(durations, dtype=np.int32)
        self.buffer.append(row)
        self.count += 1
        if len(self.buffer) >= self.rows_per_group:
            self._flush()

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Append the rows of another units file's record batch as they are (no per-row Python work)."""
        self._flush()
        self.writer.write_table(pa.Table.from_batches([batch]).select(self.schema.names).cast(self.schema))
        self.count += batch.num_rows

    def _flush(self) -> None:
        if self.buffer:
            cols = {name: [r[name] for r in self.buffer] for name in self.schema.names}
            self.writer.write_table(pa.table(cols, schema=self.schema))
            self.buffer = []

    def close(self) -> None:
        self._flush()
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.writer.close()  # may fail again on a full disk: the temporary file goes all the same
        except Exception:
            pass
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> UnitsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None:
            try:
                self.close()
            except BaseException as err:
                self.abort()
                self._raise_named(err)
                raise
        else:
            self.abort()
            self._raise_named(exc)

    def _raise_named(self, err: BaseException) -> None:
        """A failed write (pyarrow's OSError names no file) is re-raised as an OSError naming the units file."""
        failure = write_failure(err, self.tmp, self.path)
        if failure is not None:
            raise failure from err


def read_units_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UnitsFileError(f"{path}: units file not found")
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as err:
        raise UnitsFileError(f"{path}: not a Parquet units file, or truncated or corrupt ({err}); delete it and "
                             "rerun the rule that writes it (quantize / dedup)") from err
    if META_KEY not in meta:
        raise UnitsFileError(f"{path}: Parquet file without the '{META_KEY.decode()}' metadata of a units file")
    try:
        values = json.loads(meta[META_KEY])
    except json.JSONDecodeError as err:
        raise UnitsFileError(f"{path}: units metadata is not JSON ({err}); {REMEDY}") from None
    return check_meta(values, path)


def check_meta(meta: Any, path: str | Path) -> dict[str, Any]:
    """The metadata, after checking vocab_size, frame_rate and deduplicated; an error naming the file otherwise."""
    if not isinstance(meta, dict):
        raise UnitsFileError(f"{path}: units metadata is not a JSON object; {REMEDY}")
    vocab, rate = meta.get("vocab_size"), meta.get("frame_rate", 50.0)
    if isinstance(vocab, bool) or not isinstance(vocab, int | float) or vocab != int(vocab) \
            or not 1 <= vocab <= MAX_VOCAB:
        raise UnitsFileError(f"{path}: units metadata vocab_size={vocab!r} is not an integer in [1, {MAX_VOCAB}]: "
                             f"not a file this pipeline wrote, or a damaged one; {REMEDY}")
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= MAX_FRAME_RATE:
        raise UnitsFileError(f"{path}: units metadata frame_rate={rate!r} is not a rate in (0, {MAX_FRAME_RATE:g}] "
                             f"Hz; {REMEDY}")
    if not isinstance(meta.get("deduplicated", False), bool):
        raise UnitsFileError(f"{path}: units metadata deduplicated={meta.get('deduplicated')!r} is not true or "
                             f"false; {REMEDY}")
    return {**meta, "vocab_size": int(vocab)}


def check_batch(batch: pa.RecordBatch | pa.Table, vocab_size: int, path: str | Path) -> None:
    """Unit ids in [0, vocab_size), and, in a deduplicated file, one positive duration per unit."""
    if "units" not in batch.schema.names:
        raise UnitsFileError(f"{path}: no 'units' column; {REMEDY}")
    flat = pc.list_flatten(batch.column("units"))
    if len(flat):
        low, high = pc.min_max(flat).values()
        if low.as_py() < 0 or high.as_py() >= vocab_size:
            raise UnitsFileError(f"{path}: unit ids {low.as_py()}..{high.as_py()} outside [0, {vocab_size}) of its "
                                 f"metadata's vocab_size; {REMEDY}")
    if "durations" in batch.schema.names:
        durations = batch.column("durations")
        if not pc.all(pc.equal(pc.list_value_length(durations), pc.list_value_length(batch.column("units")))).as_py():
            raise UnitsFileError(f"{path}: an utterance has not one duration per unit; {REMEDY}")
        flat = pc.list_flatten(durations)
        if len(flat) and pc.min(flat).as_py() < 1:
            raise UnitsFileError(f"{path}: a duration below 1 frame; {REMEDY}")


def read_units(path: str | Path) -> pd.DataFrame:
    """The whole file as a DataFrame (id, units[, durations]) with numpy int32 arrays in the list columns."""
    meta = read_units_meta(path)
    table = pq.read_table(path)
    check_batch(table, meta["vocab_size"], path)
    return table.to_pandas()


def iter_units(path: str | Path, batch_size: int = 1024) -> Iterator[dict[str, Any]]:
    """Rows one at a time without loading the file: {'id', 'units'[, 'durations']} with numpy arrays."""
    meta = read_units_meta(path)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        check_batch(batch, meta["vocab_size"], path)
        cols = batch.to_pydict()
        for i, uid in enumerate(cols["id"]):
            row: dict[str, Any] = {"id": uid, "units": np.asarray(cols["units"][i], dtype=np.int32)}
            if "durations" in cols:
                row["durations"] = np.asarray(cols["durations"][i], dtype=np.int32)
            yield row


def write_text_units(path: str | Path, out: str | Path) -> None:
    """Export to the `name<TAB>u1 u2 ...` lines that fairseq / textlesslib tools read."""
    with atomic_write(out) as tmp, tmp.open("w") as handle:  # streamed: memory stays flat for any corpus size
        for row in iter_units(path):
            handle.write(f"{row['id']}\t{' '.join(map(str, row['units'].tolist()))}\n")
