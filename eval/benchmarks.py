"""Readers of the benchmark layouts (sLM21 gold.csv, SpokenStoryCloze, ZeroSpeech .item, 100 Hz phone labels).

Each reader checks its input and fails with a `BenchmarkLayoutError` that names the file and shows the layout
it expected, so that a misplaced or truncated download is caught before any scoring.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import numpy as np
import pandas as pd

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
    "phones": "frame-level phone labels: JSON lines {\"id\": <utterance id>, \"phones\": [label, ...]}, one label "
              "per 10 ms frame (frame i covers (i + 0.5) * 10 ms), silence kept as a label",
}


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
        raise ValueError(f"{gold}: cannot tell the set from the folder name {name!r} (expected dev or test); "
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
            raise ValueError(f"item kind must be 'triphone' or 'phoneme', got {given!r}")
        return given
    name = Path(path).name.lower()
    kinds = [k for k in ("triphone", "phoneme") if k in name]
    if len(kinds) != 1:
        raise ValueError(f"{path}: cannot tell triphone from phoneme items by the file name; set item_kind in "
                         "--config")
    return kinds[0]


def read_phone_labels(path: str | Path) -> dict[str, list[str]]:
    """100 Hz phone labels per utterance id."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkLayoutError(path, "phone label file not found", "phones")
    labels: dict[str, list[str]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BenchmarkLayoutError(path, f"line {lineno} is not JSON ({err})", "phones") from err
        if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("phones"), list):
            raise BenchmarkLayoutError(path, f"line {lineno} lacks a string 'id' and a list 'phones'", "phones")
        if row["id"] in labels:
            raise BenchmarkLayoutError(path, f"line {lineno}: utterance {row['id']!r} appears twice", "phones")
        labels[row["id"]] = row["phones"]
    if not labels:
        raise BenchmarkLayoutError(path, "no utterance", "phones")
    return labels
