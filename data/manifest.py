"""Corpus manifests (TSV: id, path, num_samples, speaker) built from any directory of wav/flac, bad files reported.

Usage: python -m data.manifest ROOT OUT.tsv [--config '{"ext": ["flac"], "speaker": "dir"|"prefix"|"single",
                                               "bad_audio": "skip",
                                               "check": "header"|"decode", "ids": "path"|"stem"}']

`path` is stored relative to the manifest's directory when the audio lies below it, absolute otherwise, so a
manifest can move together with its audio. `id` is, by default, the path below ROOT without its extension
(Libri-Light: `103/1240/103-1240-0000`), unique by construction; `ids: stem` gives the file stem
(`103-1240-0000`), which benchmark gold files, ABX items and feature files use, and refuses two files sharing one.
By default only headers are read (soundfile.info), in parallel threads; `check: decode` reads every sample too.
Symlinked folders are followed (each folder once; what cannot be followed is listed in the log), see data.walk.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from common.config import loads
from common.io import atomic_write
from data.audio import AUDIO_EXTENSIONS, AudioCheck, check_audio, check_header
from data.config import ManifestConfig
from data.walk import walk_audio

MANIFEST_COLUMNS = ("id", "path", "num_samples", "speaker")
BAD_AUDIO_POLICIES = ("fail", "skip")
CHECKS = {"header": check_header, "decode": check_audio}
ID_RULES = ("path", "stem")
CHECK_CHUNK = 1024  # files checked per batch of the thread pool (see build_manifest)


class ManifestError(ValueError):
    """A manifest (or the directory it is built from) is not usable; the message names the file."""


def speaker_of(relpath: Path, how: str, root: Path | None = None) -> str:
    """Speaker id of a file: its first directory below the root (`dir`, LibriSpeech), its stem prefix (`prefix`),
    or, for a folder of one speaker's recordings (`single`), the root folder's name."""
    if how == "single":
        return root.name if root is not None and root.name else "speaker"
    if how == "dir":
        if len(relpath.parts) < 2:
            raise ManifestError(
                f"{relpath}: lies directly in the corpus folder {root or 'ROOT'}, but speaker: dir (the default) "
                "takes each file's first folder below it as its speaker (ROOT/SPEAKER/...); for one speaker's "
                "recordings set speaker: single, for names that start with the speaker (SPEAKER_...) speaker: prefix")
        return relpath.parts[0]
    if how == "prefix":
        stem = relpath.stem
        for sep in ("-", "_"):
            if sep in stem:
                return stem.split(sep, 1)[0]
        return stem
    raise ManifestError(f"unknown speaker rule {how!r}; expected 'dir', 'prefix' or 'single'")


def find_audio(root: Path, exts: tuple[str, ...], log=sys.stderr) -> list[str]:
    """Every path below root with an audio extension that is not a directory, sorted (identical across runs),
    symlinked folders followed (data.walk); folders it could not follow are listed on `log`.

    Symlinks that cannot be followed (a loop, a missing target) and other non-files are kept: they are bad files
    to report like any other (`not_a_file`), never silently left out.
    """
    if not root.is_dir():
        raise ManifestError(f"{root}: not a directory")
    walk = walk_audio(root, exts)
    for path, why in walk.not_followed:
        print(f"not followed: {path}: {why}", file=log)
    if not walk.files:
        raise ManifestError(f"{root}: no audio files with extension {', '.join(exts)} (set the corpus's ext, e.g. "
                            "ext: [wav, flac, mp3], if the audio is in another format)")
    return walk.files


def not_a_file(path: Path) -> str | None:
    """Why `path` cannot be read as an audio file before opening it (a broken symlink, a FIFO ...), or None."""
    try:
        mode = path.stat().st_mode  # follows symlinks: a loop or a missing target raises here
    except OSError as err:
        what = "symlink that cannot be followed" if path.is_symlink() else "unreadable"
        return f"{what} ({err.strerror})"
    if not stat.S_ISREG(mode):
        return "not a regular file"  # reading a FIFO or a device would block or never end
    return None


def check_file(path: str | Path, convert: bool, check: str = "header") -> AudioCheck:
    """`check_header` or `check_audio` (decode), after making sure the path is a readable regular file."""
    problem = not_a_file(Path(path))
    return AudioCheck(str(path), 0, 0, 0, problem) if problem else CHECKS[check](path, convert=convert)


def utterance_id(relpath: Path, how: str) -> str:
    """The id of a file below the root: its relative path without extension (`path`) or its stem (`stem`)."""
    return relpath.stem if how == "stem" else relpath.with_suffix("").as_posix()


def check_unique_ids(table: pd.DataFrame, root: Path, how: str) -> None:
    """Two files with one id (a shared stem, or `x.wav` next to `x.flac`) are an error naming both files."""
    repeated = table[table["id"].duplicated(keep=False)].sort_values(["id", "path"])
    if not len(repeated):
        return
    groups = [f"  {uid}: {' and '.join(paths)}" for uid, paths in repeated.groupby("id", sort=True)["path"]
              .agg(list).items()]
    shown = "\n".join(groups[:10]) + (f"\n  ... and {len(groups) - 10} more" if len(groups) > 10 else "")
    hint = ("file stems (ids: stem) must be unique; use ids: path, or rename the files"
            if how == "stem" else "a file name may exist once, with one extension")
    raise ManifestError(f"{root}: {len(groups)} utterance id(s) name several files ({hint}):\n{shown}")


def build_manifest(
    root: str | Path,
    out: str | Path,
    *,
    exts: tuple[str, ...] = AUDIO_EXTENSIONS,
    speaker: str = "dir",
    bad_audio: str = "fail",
    convert: bool = False,
    check: str = "header",
    ids: str = "path",
    threads: int = 4,
    log=sys.stderr,
) -> pd.DataFrame:
    """Check every file below root and write the manifest (and a `.skipped.tsv` of rejected files) atomically."""
    if bad_audio not in BAD_AUDIO_POLICIES:
        raise ManifestError(f"bad_audio={bad_audio!r}; expected one of {BAD_AUDIO_POLICIES}")
    if check not in CHECKS:
        raise ManifestError(f"check={check!r}; expected one of {tuple(CHECKS)}")
    if ids not in ID_RULES:
        raise ManifestError(f"ids={ids!r}; expected one of {ID_RULES}")
    root, out = Path(root).resolve(), Path(out)
    files = find_audio(root, tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in exts), log)
    rows, bad = [], []
    # Threads: header reads and libsndfile decoding wait on the disk or release the GIL. Files go to the pool a
    # chunk at a time, each check turned into its row at once: `pool.map` over every file submits them all, holding
    # a Future and a check result per file of the corpus (measured: ~1.8 KB per file, GBs for millions of files).
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for start in range(0, len(files), CHECK_CHUNK):
            chunk = files[start:start + CHECK_CHUNK]
            for path, found in zip(chunk, pool.map(lambda p: check_file(p, convert, check), chunk), strict=True):
                if found.problem is not None:
                    bad.append((path, found.problem))
                    print(f"bad audio: {path}: {found.problem}", file=log)
                    continue
                rel = Path(path).relative_to(root)
                rows.append((utterance_id(rel, ids), path, found.num_samples, speaker_of(rel, speaker, root)))
    if bad and bad_audio == "fail":
        shown = "\n".join(f"  {p}: {why}" for p, why in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise ManifestError(
            f"{len(bad)} bad audio file(s) under {root} (set bad_audio: skip to drop and count them):\n{shown}{more}"
        )
    table = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    check_unique_ids(table, root, ids)
    write_manifest(table, out)
    write_table(pd.DataFrame(bad, columns=["path", "problem"]), out.with_suffix(".skipped.tsv"))
    print(f"manifest {out} ({check} check, {ids} ids): {len(table)} files, {len(bad)} skipped, "
          f"{table['num_samples'].sum() / 16000 / 3600:.3f} h", file=log)
    return table


def write_table(table: pd.DataFrame, out: Path) -> None:
    """Write a TSV atomically: a reader never sees a half-written table."""
    with atomic_write(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def write_manifest(table: pd.DataFrame, out: str | Path) -> None:
    """Write a manifest, storing paths relative to its folder when the audio lies below it."""
    out = Path(out)
    base = out.parent.resolve()
    table = table.copy()

    def rel(p: str) -> str:
        p = Path(p).resolve()
        return str(p.relative_to(base)) if p.is_relative_to(base) else str(p)

    table["path"] = table["path"].map(rel)
    write_table(table[list(MANIFEST_COLUMNS)], out)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read a manifest, check its columns and make every path absolute."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    try:
        table = pd.read_csv(path, sep="\t", dtype={"id": str, "speaker": str, "path": str},
                            keep_default_na=False, na_values=[""])  # a speaker named "NA" is not missing
    except Exception as err:
        raise ManifestError(f"{path}: not a readable TSV manifest ({err})") from err
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise ManifestError(f"{path}: manifest lacks column(s) {missing}; expected {list(MANIFEST_COLUMNS)}")
    # A truncated file parses as a table whose last row has empty cells: refuse it instead of reading NaNs.
    empty = table[list(MANIFEST_COLUMNS)].isna().any(axis=1)
    num_samples = pd.to_numeric(table["num_samples"], errors="coerce")
    bad = empty | ~(num_samples > 0) | (num_samples != num_samples.round())
    if bad.any():
        lines = [int(i) + 2 for i in np.flatnonzero(bad.to_numpy())[:5]]  # +2: 1-based, after the header
        raise ManifestError(f"{path}: empty cells or a num_samples that is not a positive integer on line(s) "
                            f"{lines}: the manifest is truncated or corrupt; delete it and rerun the rule (or "
                            "`python -m data.manifest`) that builds it")
    table["num_samples"] = num_samples.astype(np.int64)
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) != b"\n":  # a cut inside the last cell (e.g. the speaker) would still parse
            raise ManifestError(f"{path}: does not end with a newline, so it is probably truncated; delete it and "
                                "rerun the rule that builds it (a manifest written by hand needs a final newline)")
    base = path.parent.resolve()
    table["path"] = [str(p) if os.path.isabs(p) else str(base / p) for p in table["path"]]
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", default="{}", help='data.config.ManifestConfig JSON: {"ext": ["wav", "flac"], '
                        '"speaker": "dir"|"prefix"|"single", "bad_audio": "fail"|"skip", "convert": false, '
                        '"check": "header"|"decode", "ids": "path"|"stem"}')
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    cfg = loads(ManifestConfig, args.config)
    build_manifest(
        args.root, args.out, exts=cfg.ext, speaker=cfg.speaker,
        bad_audio=cfg.bad_audio, convert=cfg.convert, check=cfg.check, ids=cfg.ids, threads=args.threads,
    )


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
