"""Readers of the benchmark layouts (sLM21 gold.csv, SpokenStoryCloze, ZeroSpeech .item, 100 Hz phone labels) and
of published unit files (ours, SpidR's `.jsonl.gz`, textlesslib / slamkit text units), read as they are.

Each reader checks its input and fails with a `BenchmarkLayoutError` that names the file and shows the layout
it expected, so that a misplaced or truncated download is caught before any scoring.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pandas as pd

from units.format import iter_units, read_units_meta

LEXICAL_COLUMNS = ("filename", "id", "voice", "frequency", "word", "phones", "length", "correct")
SYNTACTIC_COLUMNS = ("filename", "id", "voice", "type", "subtype", "transcription", "correct")
ITEM_COLUMNS = ("#file", "onset", "offset", "#phone", "prev-phone", "next-phone", "speaker")

LAYOUTS = {
    "lexical": "sLM21 lexical (sWUGGY): <root>/lexical/{dev,test}/<filename>.wav + gold.csv with columns "
               + ",".join(LEXICAL_COLUMNS) + " (correct: 1 = word, 0 = non-word; one word and one non-word per "
               "(id, voice))",
    "syntactic": "sLM21 syntactic (sBLIMP): <root>/syntactic/{dev,test}/<filename>.wav + gold.csv with columns "
                 + ",".join(SYNTACTIC_COLUMNS) + " (correct: 1 = grammatical, 0 = not; the k-th correct row "
                 "pairs with the k-th incorrect row, same id, voice, type and subtype)",
    "storycloze": "SpokenStoryCloze: one folder of <2i>_<story>_correct.wav and <2i+1>_<story>_incorrect.wav, "
                  "i = 0..n-1",
    "item": "ZeroSpeech ABX item file: a header line '" + " ".join(ITEM_COLUMNS) + "' then one space-separated "
            "row per token (#file = utterance id, onset < offset in seconds)",
    "phones": "frame-level phone labels: JSON lines {\"name\" (SpidR's files) or \"id\": <utterance id>, "
              "\"phones\": [label, ...]}, plain or gzip (.jsonl.gz), one label per 10 ms frame (frame i covers "
              "(i + 0.5) * 10 ms), silence kept as a label",
    "units": "units file: a units Parquet file (units.format), or JSON lines {\"name\" (SpidR's paper/results) or "
             "\"id\": <utterance id>, \"units\": [int, ...]}, or text lines '<utterance id><TAB>u1 u2 ...' "
             "(textlesslib / slamkit); JSON lines and text may be gzip-compressed; units are frame-level, ids >= 0",
}


class BenchmarkError(ValueError):
    """A benchmark input that cannot be used as asked (its set, its item kind, pairs that do not pair)."""


class BenchmarkLayoutError(ValueError):
    """A benchmark file or folder that is missing or not in its official layout."""

    def __init__(self, path: str | Path, problem: str, layout: str) -> None:
        super().__init__(f"{path}: {problem}\n  expected layout: {LAYOUTS[layout]}")
        self.path = Path(path)


def split_of(gold: str | Path, given: str | None = None) -> str:
    """The set (dev / test) of a gold.csv, from its folder name unless given."""
    if given is not None:
        return given
    name = Path(gold).resolve().parent.name
    if name not in ("dev", "test"):
        raise BenchmarkError(f"{gold}: cannot tell the set from the folder name {name!r} (expected dev or test); "
                             "pass --set")
    return name


def _read_gold(path: str | Path, columns: tuple[str, ...], layout: str, check_wavs: bool) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise BenchmarkLayoutError(path, "gold file not found", layout)
    try:
        gold = pd.read_csv(path, dtype={"filename": str, "voice": str}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise BenchmarkLayoutError(path, f"not a CSV file ({err})", layout) from err
    missing = [c for c in columns if c not in gold.columns]
    if missing:
        raise BenchmarkLayoutError(path, f"missing column(s) {missing}; found {list(gold.columns)}", layout)
    if gold.empty:
        raise BenchmarkLayoutError(path, "no rows", layout)
    bad = gold.loc[~gold["correct"].isin([0, 1]), "correct"]
    if len(bad):
        raise BenchmarkLayoutError(path, f"'correct' must be 0 or 1; found {sorted(set(map(str, bad)))[:5]}", layout)
    gold["correct"] = gold["correct"].astype(int)
    if gold["filename"].isna().any():
        raise BenchmarkLayoutError(path, "empty 'filename' cell(s)", layout)
    dup = gold["filename"][gold["filename"].duplicated()]
    if len(dup):
        raise BenchmarkLayoutError(path, f"duplicate filename(s) {sorted(set(dup))[:5]}", layout)
    if check_wavs:
        stems = {p.stem for p in path.parent.glob("*.wav")}
        absent = [f for f in gold["filename"] if f not in stems]
        if absent:
            raise BenchmarkLayoutError(path, f"{len(absent)} of {len(gold)} gold filename(s) have no wav beside "
                                       f"gold.csv, e.g. {absent[:3]}", layout)
    return gold


def read_lexical_gold(path: str | Path, *, check_wavs: bool = True) -> pd.DataFrame:
    """sWUGGY gold.csv as a DataFrame (official columns; `frequency` as nullable Int64, as the scorer reads it)."""
    gold = _read_gold(path, LEXICAL_COLUMNS, "lexical", check_wavs)
    try:
        gold["frequency"] = gold["frequency"].astype(pd.Int64Dtype())
    except (TypeError, ValueError) as err:
        raise BenchmarkLayoutError(path, f"'frequency' must hold integer counts ({err})", "lexical") from err
    check_lexical_pairs(gold, path)
    return gold


def check_lexical_pairs(gold: pd.DataFrame, path: str | Path) -> None:
    """Refuse a sWUGGY gold file whose rows do not pair up one to one on (id, voice).

    The official scorer inner-joins words (correct=1) with non-words (correct=0) on (id, voice): a row without a
    partner silently drops out, and two words or non-words in one (id, voice) silently count twice. In the real
    sLM21 files every (id, voice) holds exactly one word and one non-word (so words and non-words of an id share
    their voices); anything else (a non-word moved to another id, a non-word marked correct) would change the
    score without an error.
    """
    empty = gold[["id", "voice"]].isna().any(axis=1)
    if empty.any():
        lines = (np.flatnonzero(empty.to_numpy())[:5] + 2).tolist()
        raise BenchmarkLayoutError(path, f"empty 'id' or 'voice' cell(s) on line(s) {lines}", "lexical")
    counts = (gold.groupby(["id", "voice"], sort=True)["correct"]
              .agg(words=lambda c: int((c == 1).sum()), non_words=lambda c: int((c == 0).sum())))
    bad = counts[(counts["words"] != 1) | (counts["non_words"] != 1)]
    if bad.empty:
        return
    line = pd.Series(np.arange(len(gold)) + 2, index=pd.MultiIndex.from_frame(gold[["id", "voice"]]))
    shown = [f"id {i} voice {voice}: {row.words} word(s) and {row.non_words} non-word(s) on line(s) "
             f"{sorted(line.loc[[(i, voice)]].tolist())}" for (i, voice), row in bad.head(5).iterrows()]
    more = f"; ... and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise BenchmarkLayoutError(
        path, f"{len(bad)} (id, voice) group(s) break the sWUGGY pairing rule (exactly one word, correct=1, and one "
        "non-word, correct=0, per (id, voice), as the official scorer's join on (id, voice) assumes): "
        + "; ".join(shown) + more, "lexical")


def read_syntactic_gold(path: str | Path, *, check_wavs: bool = True) -> pd.DataFrame:
    """sBLIMP gold.csv as a DataFrame in file order (the official scorer pairs rows by that order)."""
    gold = _read_gold(path, SYNTACTIC_COLUMNS, "syntactic", check_wavs)
    gold["type"] = gold["type"].astype(str)
    gold["subtype"] = gold["subtype"].astype(str)
    return gold


STORY_NAME = re.compile(r"^(?P<index>\d+)_(?P<story>.+)_(?P<label>correct|incorrect)$")


def read_storycloze(folder: str | Path) -> pd.DataFrame:
    """StoryCloze pairs: one row per story with `pair`, `story`, `correct` and `incorrect` wav stems."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkLayoutError(folder, "folder not found", "storycloze")
    wavs = sorted(folder.glob("*.wav"))
    if not wavs:
        raise BenchmarkLayoutError(folder, "no .wav file", "storycloze")
    by_index: dict[int, tuple[str, str, str]] = {}
    for wav in wavs:
        m = STORY_NAME.match(wav.stem)
        if m is None:
            raise BenchmarkLayoutError(wav, "file name does not match <index>_<story>_correct|incorrect.wav",
                                       "storycloze")
        index = int(m["index"])
        if index in by_index:
            raise BenchmarkLayoutError(wav, f"index {index} is used twice (also by {by_index[index][0]}.wav)",
                                       "storycloze")
        by_index[index] = (wav.stem, m["story"], m["label"])
    if len(by_index) % 2 or sorted(by_index) != list(range(len(by_index))):
        gaps = sorted(set(range(max(by_index) + 1)) - set(by_index))[:5]
        raise BenchmarkLayoutError(folder, f"indices must be 0..2n-1 without gaps; missing {gaps or 'an odd tail'}",
                                   "storycloze")
    rows = []
    for i in range(len(by_index) // 2):
        (pos, story, label_pos), (neg, story_neg, label_neg) = by_index[2 * i], by_index[2 * i + 1]
        if (label_pos, label_neg) != ("correct", "incorrect") or story != story_neg:
            raise BenchmarkLayoutError(folder / f"{pos}.wav", f"pair {i} is {pos}.wav / {neg}.wav; expected "
                                       f"<{2 * i}>_<story>_correct and <{2 * i + 1}>_<same story>_incorrect",
                                       "storycloze")
        rows.append({"pair": i, "story": story, "correct": pos, "incorrect": neg})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ItemFile:
    """A parsed .item file: its header line and one (raw line, file, onset, offset, speaker) row per token."""

    path: Path
    header: str
    lines: tuple[str, ...]
    files: tuple[str, ...]
    onsets: tuple[Decimal, ...]
    offsets: tuple[Decimal, ...]

    def __len__(self) -> int:
        return len(self.lines)


def read_item_file(path: str | Path) -> ItemFile:
    """Read and check a ZeroSpeech .item file; onsets/offsets are exact Decimals as fastabx parses them."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkLayoutError(path, "item file not found", "item")
    text = path.read_text().splitlines()
    if not text:
        raise BenchmarkLayoutError(path, "empty file", "item")
    header = text[0].strip()
    if tuple(header.split()) != ITEM_COLUMNS:
        raise BenchmarkLayoutError(path, f"header is {header!r}", "item")
    lines, files, onsets, offsets = [], [], [], []
    for lineno, line in enumerate(text[1:], start=2):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != len(ITEM_COLUMNS):
            raise BenchmarkLayoutError(path, f"line {lineno} has {len(parts)} columns: {line!r}", "item")
        try:
            onset, offset = Decimal(parts[1]), Decimal(parts[2])
        except InvalidOperation:
            raise BenchmarkLayoutError(path, f"line {lineno}: onset/offset are not numbers: {line!r}",
                                       "item") from None
        if not onset < offset:
            raise BenchmarkLayoutError(path, f"line {lineno}: onset {onset} is not before offset {offset}", "item")
        lines.append(" ".join(parts))
        files.append(parts[0])
        onsets.append(onset)
        offsets.append(offset)
    if not lines:
        raise BenchmarkLayoutError(path, "no item rows after the header", "item")
    return ItemFile(path, header, tuple(lines), tuple(files), tuple(onsets), tuple(offsets))


def item_kind(path: str | Path, given: str | None = None) -> str:
    """'triphone' or 'phoneme' items, from the file name (triphone-dev-clean.item, phoneme.item) unless given."""
    if given is not None:
        if given not in ("triphone", "phoneme"):
            raise BenchmarkError(f"item kind must be 'triphone' or 'phoneme', got {given!r}")
        return given
    name = Path(path).name.lower()
    kinds = [k for k in ("triphone", "phoneme") if k in name]
    if len(kinds) != 1:
        raise BenchmarkError(f"{path}: cannot tell triphone from phoneme items by the file name; set item_kind in "
                             "--config")
    return kinds[0]


GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


def _text_lines(path: Path, layout: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a text file, gunzipped when it starts with the gzip magic (whatever its name)."""
    with path.open("rb") as raw:
        gzipped = raw.read(2) == GZIP_MAGIC
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as f:
            yield from enumerate(io.TextIOWrapper(f, encoding="utf-8"), start=1)
    except (OSError, EOFError, UnicodeDecodeError) as err:  # gzip.BadGzipFile is an OSError
        raise BenchmarkLayoutError(path, f"unreadable {'gzip ' if gzipped else ''}text ({err}); a truncated "
                                   "download?", layout) from err


def _utterance_id(path: Path, row: object, lineno: int, value_key: str, layout: str) -> str:
    """The `name` (SpidR's files) or `id` (ours) of a JSON line that also holds a list under `value_key`."""
    if not isinstance(row, dict) or not isinstance(row.get(value_key), list):
        raise BenchmarkLayoutError(path, f"line {lineno} is not an object with a list {value_key!r}", layout)
    names = [row[k] for k in ("name", "id") if k in row]
    if len(names) != 1 or not isinstance(names[0], str) or not names[0]:
        raise BenchmarkLayoutError(path, f"line {lineno} needs exactly one string utterance id, 'name' or 'id'; "
                                   f"found keys {sorted(row)}", layout)
    return names[0]


def read_phone_labels(path: str | Path) -> dict[str, list[str]]:
    """100 Hz phone labels per utterance id (our `.jsonl` or SpidR's `phoneme-*.jsonl.gz`, read as it is)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkLayoutError(path, "phone label file not found", "phones")
    labels: dict[str, list[str]] = {}
    interned: dict[str, str] = {}  # one string object per phone: millions of frames stay a few bytes each
    for lineno, line in _text_lines(path, "phones"):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkLayoutError(path, f"line {lineno} is not JSON ({err})", "phones") from err
        uid = _utterance_id(path, row, lineno, "phones", "phones")
        if uid in labels:
            raise BenchmarkLayoutError(path, f"line {lineno}: utterance {uid!r} appears twice", "phones")
        if not all(isinstance(p, str) for p in row["phones"]):
            raise BenchmarkLayoutError(path, f"line {lineno}: phone labels must be strings", "phones")
        labels[uid] = [interned.setdefault(p, p) for p in row["phones"]]
    if not labels:
        raise BenchmarkLayoutError(path, "no utterance", "phones")
    return labels


@dataclass(frozen=True)
class UnitsSource:
    """What a units file says about itself: its format, and the rate and vocabulary when it records them."""

    path: Path
    format: str  # "parquet" | "jsonl" | "text"
    frame_rate: float | None  # Hz; JSON lines and text units do not record it
    vocab_size: int | None
    deduplicated: bool = False


def units_source(path: str | Path) -> UnitsSource:
    """Sniff a units file by its content (Parquet magic, else JSON lines if the first line is an object, else text)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkLayoutError(path, "units file not found", "units")
    with path.open("rb") as raw:
        head = raw.read(4)
    if head == PARQUET_MAGIC:
        meta = read_units_meta(path)
        return UnitsSource(path, "parquet", float(meta["frame_rate"]), int(meta["vocab_size"]),
                           bool(meta.get("deduplicated")))
    first = next((line for _, line in _text_lines(path, "units") if line.strip()), None)
    if first is None:
        raise BenchmarkLayoutError(path, "no utterance", "units")
    return UnitsSource(path, "jsonl" if first.lstrip().startswith("{") else "text", None, None)


def iter_unit_sequences(source: UnitsSource) -> Iterator[tuple[str, np.ndarray]]:
    """(utterance id, frame-level int64 units) in file order; a deduplicated Parquet file is expanded to frames."""
    path = source.path
    if source.format == "parquet":
        for row in iter_units(path):
            units = row["units"].astype(np.int64)
            yield row["id"], np.repeat(units, row["durations"]) if source.deduplicated else units
        return
    seen: set[str] = set()
    for lineno, line in _text_lines(path, "units"):
        if not line.strip():
            continue
        if source.format == "jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkLayoutError(path, f"line {lineno} is not JSON ({err})", "units") from err
            uid = _utterance_id(path, row, lineno, "units", "units")
            values = row["units"]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise BenchmarkLayoutError(path, f"line {lineno} (utterance {uid!r}): units must be integers",
                                           "units")
            units = np.asarray(values, dtype=np.int64)
        else:
            uid, tab, rest = line.rstrip("\r\n").partition("\t")
            if not tab or not uid:
                raise BenchmarkLayoutError(path, f"line {lineno} is not '<utterance id><TAB>u1 u2 ...': "
                                           f"{line[:80]!r}", "units")
            try:
                units = np.asarray([int(u) for u in rest.split()], dtype=np.int64)
            except ValueError:
                raise BenchmarkLayoutError(path, f"line {lineno} (utterance {uid!r}): units must be integers",
                                           "units") from None
        if len(units) and units.min() < 0:
            raise BenchmarkLayoutError(path, f"line {lineno} (utterance {uid!r}): negative unit id {units.min()}",
                                       "units")
        if uid in seen:
            raise BenchmarkLayoutError(path, f"line {lineno}: utterance {uid!r} appears twice", "units")
        seen.add(uid)
        yield uid, units
    if not seen:
        raise BenchmarkLayoutError(path, "no utterance", "units")
