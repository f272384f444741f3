"""Reading artefacts: one clear error naming a truncated or corrupt file and what to do, and a torch.load that
only ever rebuilds tensors and plain containers (never runs code from a pickle)."""

from __future__ import annotations

import errno
import pickle
from pathlib import Path
from typing import Any


class ArtefactError(ValueError):
    """An artefact that is truncated, corrupt or not what this pipeline writes; the message names it and the fix."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = text.split(". ")[0]  # torch appends paragraphs of advice to its first sentence
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def corrupt(path: str | Path, what: str, err: BaseException, remedy: str) -> ArtefactError:
    """The error for an artefact that exists but cannot be read, e.g. a file cut short by a killed job."""
    return ArtefactError(f"{path}: {what} is truncated or corrupt ({_first_line(err)}); {remedy}")


def load_torch(path: str | Path, *, what: str, remedy: str, mmap: bool = False) -> Any:
    """torch.load(weights_only=True) on CPU; a missing, truncated or unsafe file is one error naming it.

    weights_only=True refuses any pickle that would build other objects than tensors and plain containers, so a
    malicious file (an object whose __reduce__ runs code) is rejected before any of its code runs.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, f"{what} not found", str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            # torch's message is a paragraph; the line that names the refused global is the informative one.
            lines = [ln.strip() for ln in str(err).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
            raise ArtefactError(
                f"{path}: {what} holds Python objects that torch.load(weights_only=True) refuses to build, so it "
                f"was not loaded and none of its code ran ({lines[0] if lines else _first_line(err)}); a pickle "
                f"that could run code is not a file this pipeline wrote: {remedy}") from None
        raise corrupt(path, what, err, remedy) from err
    except (RuntimeError, EOFError, ValueError) as err:  # a truncated zip, a cut-off legacy pickle, ...
        raise corrupt(path, what, err, remedy) from err
