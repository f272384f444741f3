"""Walking a corpus folder: audio files below a root, through symlinked folders, and a cheap fingerprint of them.

Corpora on clusters are often laid out with symlinks (one folder of links to speakers stored elsewhere), so the walk
follows symlinked directories; a directory reached twice (a symlink loop, or two links to one folder) is walked once
and every folder it could not enter is listed, never silently left out. Standard library only: the workflow calls
`fingerprint` while it builds the DAG.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Walk:
    """Audio files found (paths below the root as the walk reached them) and what could not be followed, why."""

    files: list[str] = field(default_factory=list)
    not_followed: list[tuple[str, str]] = field(default_factory=list)


def walk_audio(root: str | Path, exts: tuple[str, ...]) -> Walk:
    """Every non-directory entry below `root` whose extension (lower-cased, with its dot) is in `exts`, sorted as
    paths sort (by component), following symlinked directories once each."""
    walk = Walk()
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
        except OSError as err:
            walk.not_followed.append((folder, f"symlinked folder that cannot be followed ({err.strerror})"))
            continue
        if (info.st_dev, info.st_ino) in seen:
            walk.not_followed.append((folder, "a folder already walked through another path (a symlink loop, or "
                                              "two links to one folder): its files are listed once"))
            continue
        seen.add((info.st_dev, info.st_ino))
        try:
            with os.scandir(folder) as entries:
                listed = list(entries)
        except OSError as err:
            walk.not_followed.append((folder, f"folder that cannot be listed ({err.strerror})"))
            continue
        for entry in listed:
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in exts:
                walk.files.append(entry.path)  # a broken link with an audio name is a bad file, reported later
            elif entry.is_symlink() and not os.path.exists(entry.path):
                walk.not_followed.append((entry.path, "symlink that cannot be followed (a loop or a missing "
                                                      "target)"))
    # Strings, not Paths: a sorted Path also keeps its parts (measured: ~0.9 KB per file). The key is what Path
    # ordering compares (the components), so the order is that of sorted Paths.
    walk.files.sort(key=lambda p: p.split(os.sep))
    walk.not_followed.sort()
    return walk


def fingerprint(root: str | Path, exts: tuple[str, ...]) -> str:
    """A hash of the relative path, size and mtime of every audio file below `root` (and of what could not be
    followed): an edit, an addition, a deletion or a restored file changes it, without reading any audio.

    The workflow passes it as a param of the manifest rules, so such a change reruns exactly what depends on the
    corpus. A root that does not exist fingerprints as "missing" (the manifest job then names it).
    """
    root = Path(root)
    if not root.is_dir():
        return "missing"
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in exts)
    digest = hashlib.sha256()
    base = len(str(root).rstrip(os.sep)) + 1
    walk = walk_audio(root, exts)
    for path in walk.files:
        try:
            info = os.stat(path)
            digest.update(f"{path[base:]}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
        except OSError as err:
            digest.update(f"{path[base:]}\0{err.errno}\n".encode())
    for path, _ in walk.not_followed:
        digest.update(f"{path[base:]}\0not followed\n".encode())
    return f"{len(walk.files)}:{digest.hexdigest()[:16]}"
