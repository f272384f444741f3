"""Entry-point wrapper: expected failures become one `error: ...` line on stderr and a non-zero exit; bugs keep
their traceback.

Every `python -m` entry point ends with `if __name__ == "__main__": run_main(main)` (not `run`: several entry modules
define a `run` of their own). Expected failures are
- an OSError (read-only output, a parent path that is a file, a full disk, a missing input ...): one line naming the
  path and the cause;
- an error class defined in this project (ManifestError, ConfigError, KMeansError, CheckpointError, ...): those are
  raised on purpose with a message that names the file, key or value, so the message is all the user needs;
- torch's RuntimeError for a write that failed part-way (torch.save on a full disk), which names no path: every
  writer goes through `common.io.atomic_write`, which turns it into an OSError naming the path first;
- out of memory (torch.OutOfMemoryError, a CPU allocator's RuntimeError, MemoryError): one line naming the settings
  that reduce memory, the entry point's own `memory_hint` where it passes one;
- a pickle that torch.load(weights_only=True) refuses (e.g. inside a library's loader): one line, without torch's
  advice to load it with weights_only=False (which would run the file's code).
Anything else (KeyError, TypeError, an assertion, ...) is a bug: its traceback is kept. A named error with an
`exit_code` attribute (the trainers' stops) exits with that code, so that a retry can tell the cases apart.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.io import TORCH_WRITE_FAILURE

# Top-level packages of this repository: an exception class defined in one of them is a deliberate, named error.
PROJECT_PACKAGES = frozenset({"common", "data", "units", "spidr", "lm", "eval", "pipeline", "benchmarks"})
EXIT_ERROR = 1

# Causes worded for the user; other errnos use the system's own text (os.strerror).
CAUSES = {
    errno.ENOSPC: "no space left on device (the disk is full): free some space, then rerun",
    errno.EDQUOT: "disk quota exceeded: free some space, then rerun",
    errno.EFBIG: "file too large (a file size limit was reached)",
    errno.EROFS: "read-only file system: choose a writable output location",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


# Out of memory: torch.OutOfMemoryError (CUDA, MPS) and the CPU allocator's RuntimeError, which names no class.
OUT_OF_MEMORY = re.compile(r"out of memory|can't allocate memory|DefaultCPUAllocator", re.IGNORECASE)
MEMORY_HINT = ("use less memory per step: a smaller batch of this stage (units.extract: --batch-seconds, "
               "--max-batch, --chunk-seconds; the trainers: their micro-batch setting), or more memory (another GPU, "
               "a job with more RAM)")


def project_module(module: str) -> bool:
    """True for a module of this project, `__main__` included when it is one run as `python -m package.module`
    (its classes then live in `__main__`, not under their package's name)."""
    if module.split(".")[0] in PROJECT_PACKAGES:
        return True
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        return spec is not None and spec.name.split(".")[0] in PROJECT_PACKAGES
    return False


def is_named_error(err: BaseException) -> bool:
    """True for an exception whose class (or a base of it) is defined in this project."""
    return any(project_module(cls.__module__) for cls in type(err).__mro__)


def is_out_of_memory(err: BaseException) -> bool:
    """torch.OutOfMemoryError (checked by name: no torch import here), a CPU allocation failure, or MemoryError."""
    if isinstance(err, MemoryError) or any(cls.__name__ == "OutOfMemoryError" for cls in type(err).__mro__):
        return True
    return isinstance(err, RuntimeError) and bool(OUT_OF_MEMORY.search(str(err).split("\n")[0]))


def _first_sentences(text: str, limit: int = 2) -> str:
    """The first `limit` sentences of the first line: torch's messages go on for a paragraph."""
    line = " ".join(text.strip().split("\n")[0].split())
    return ". ".join(line.split(". ")[:limit]).rstrip(".")


def refused_pickle(err: BaseException) -> str | None:
    """One line for torch's weights_only refusal, naming the refused global, without its weights_only=False advice."""
    if not isinstance(err, pickle.UnpicklingError) or "weights only load failed" not in str(err).lower():
        return None
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
    what = f"refused global {found.group(1)}" if found else _first_sentences(str(err), 1)
    return (f"a pickle holds Python objects that torch.load(weights_only=True) refuses to build ({what}), so it was "
            "not loaded and none of its code ran; use a file this pipeline wrote, or a safetensors file")


def _file_in_the_way(path: str) -> str | None:
    """The first existing ancestor of `path` (or `path` itself) that is not a directory, if any."""
    for part in [Path(path), *Path(path).parents]:
        if part.exists() or part.is_symlink():
            return None if part.is_dir() or part == Path(path) else str(part)
    return None


def describe_os_error(err: OSError) -> str:
    """One line: the path(s) and the cause, e.g. `results/x.pt: no space left on device (the disk is full) ...`."""
    if err.filename is None:
        return " ".join(str(err).split())
    where = str(err.filename) + (f" -> {err.filename2}" if err.filename2 is not None else "")
    if err.errno in (errno.ENOTDIR, errno.EEXIST):
        blocker = _file_in_the_way(str(err.filename))
        if blocker is not None or err.errno == errno.ENOTDIR:
            return f"{where}: {blocker or 'a parent of this path'} is a file, not a directory"
        if Path(err.filename).exists() and not Path(err.filename).is_dir():
            return f"{where}: is a file, not a directory"
    cause = CAUSES.get(err.errno) if err.errno is not None else None
    if cause is None:
        cause = err.strerror or (os.strerror(err.errno) if err.errno is not None else str(err))
    elif err.strerror and err.strerror.lower() not in cause.lower() and err.strerror != os.strerror(err.errno):
        cause = f"{err.strerror}; {cause}"  # keep a specific message (e.g. torch's) next to the generic cause
    return " ".join(f"{where}: {cause}".split())


def error_message(err: BaseException, memory_hint: str | None = None) -> str | None:
    """The user-facing message for an expected failure, or None for a bug (whose traceback must be kept)."""
    if is_out_of_memory(err):
        detail = _first_sentences(str(err)) or type(err).__name__
        return f"out of memory ({detail}): {memory_hint or MEMORY_HINT}"
    pickled = refused_pickle(err)
    if pickled is not None:
        return pickled
    if isinstance(err, OSError):
        return describe_os_error(err)
    if isinstance(err, RuntimeError) and TORCH_WRITE_FAILURE.search(str(err)):
        return f"a torch.save write failed part-way ({str(err).splitlines()[0]}): the disk is probably full"
    if isinstance(err, Exception) and is_named_error(err):
        return str(err)
    return None


def run_main(main: Callable[[], Any], *, memory_hint: str | None = None) -> Any:
    """Call `main()`; an expected failure exits with `error: <message>` on stderr and a non-zero status: the
    error's own `exit_code` attribute when it has one (e.g. a training stopped on NaN), else EXIT_ERROR.

    `memory_hint` names the entry point's own settings that reduce memory, for an out-of-memory error."""
    try:
        from common.launch import job_start  # the job log's first line and the GPU driver check; no torch

        job_start()
        return main()
    except Exception as err:
        message = error_message(err, memory_hint)
        if message is None:
            raise
        label = getattr(err, "label", "error")  # "stopped" for a training stopped on purpose (a time limit)
        print(f"{label}: {message}", file=sys.stderr)
        code = getattr(err, "exit_code", None)
        sys.exit(code if isinstance(code, int) and code != 0 else EXIT_ERROR)
