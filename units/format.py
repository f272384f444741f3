"""The on-disk format of discrete units: one Parquet file per (units config, corpus), one row per utterance.

Columns: `id` (string, the utterance id of the manifest), `units` (list<int32>) and, for deduplicated files,
`durations` (list<int32>, frames per unit; their sum is the utterance's frame count). The Parquet key-value
metadata key `textless` holds JSON: `vocab_size`, `frame_rate` (Hz), `deduplicated`, and `provenance`.
pandas reads it as is: `pd.read_parquet(path)`.
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
import pyarrow.parquet as pq

from common.io import atomic_write, write_failure

META_KEY = b"textless"


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
    return json.loads(meta[META_KEY])


def read_units(path: str | Path) -> pd.DataFrame:
    """The whole file as a DataFrame (id, units[, durations]) with numpy int32 arrays in the list columns."""
    read_units_meta(path)
    return pd.read_parquet(path)


def iter_units(path: str | Path, batch_size: int = 1024) -> Iterator[dict[str, Any]]:
    """Rows one at a time without loading the file: {'id', 'units'[, 'durations']} with numpy arrays."""
    read_units_meta(path)
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
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
