"""Shared file helpers: atomic writes and the provenance (config + code version) every result file records."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@cache
def code_version() -> str:
    """`git describe` of the checkout this code runs from (with `-dirty`), or the package version outside git."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, check=True, timeout=10,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return f"textless-slm {version('textless-slm')}"
        except PackageNotFoundError:
            return "unknown"


def provenance(config: Any = None) -> dict[str, Any]:
    """What produced a result: the config subset, the code version, the command line and the time."""
    return {
        "config": config,
        "code_version": code_version(),
        "command": sys.argv,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def file_sha256(path: str | Path) -> str:
    """Content hash of a file, read in 1 MiB blocks: keys artefacts and resume state by what they were built from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on any failure it is removed.

    Readers see either the old file (or folder) or the whole new one, never a part, and a failed write (an error,
    a full disk, Ctrl-C) leaves no temporary file behind. The temporary name starts with a dot and carries the pid,
    so two writers never share one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        failure = write_failure(err, tmp, path)
        if failure is not None:
            raise failure from err
        raise


# torch.save and safetensors report a failed write (disk full, file size limit) as a RuntimeError / SafetensorError
# without the path; these patterns recognise them so that they surface as the OSError they are.
TORCH_WRITE_FAILURE = re.compile(r"PytorchStreamWriter failed|inline_container\.cc.*unexpected pos|file write failed")
_OS_ERROR_CODE = re.compile(r"os error (\d+)")


def write_failure(err: BaseException, tmp: Path, path: Path) -> OSError | None:
    """The OSError to report for a failed write to `tmp` (standing for `path`), or None to re-raise `err` as is.

    The error names `path`, never the temporary file (which is gone), and carries the cause (errno).
    """
    if isinstance(err, OSError):
        name = str(err.filename) if err.filename is not None else None
        if name is not None and not name.startswith(str(tmp)):
            return None  # an error about another file: already named correctly
        named = str(path) + name[len(str(tmp)):] if name is not None else str(path)
        return OSError(err.errno, err.strerror or str(err), named)
    text = str(err)
    if isinstance(err, RuntimeError) and TORCH_WRITE_FAILURE.search(text):
        return OSError(errno.EIO, f"torch.save could not write the whole file ({text.splitlines()[0]}): the disk "
                       "is probably full, or a file size limit was reached", str(path))
    code = _OS_ERROR_CODE.search(text)
    if type(err).__name__ == "SafetensorError" and code:
        number = int(code.group(1))
        return OSError(number, os.strerror(number), str(path))
    return None


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (see `atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
