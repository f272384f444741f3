"""Data-stage settings, checked without torch or audio libraries: the demo corpus (`data.demo`) and manifests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from common.config import ConfigError, field, load

# The generated demo's evaluation sets, as a benchmark entry's keys -> paths relative to the demo folder: data.demo
# writes them there, the workflow reads them (a `demo` benchmark is this `paths` entry under resources/demo).
DEMO_BENCHMARKS: dict[str, dict[str, str]] = {
    "dev": {"lexical": "sLM21/lexical/dev", "syntactic": "sLM21/syntactic/dev", "sSC": "storycloze/sSC",
            "tSC": "storycloze/tSC", "abx_manifest": "dev/manifest.tsv", "triphone_item": "dev/triphone.item",
            "phoneme_item": "dev/phoneme.item", "phones": "dev/phones_100hz.jsonl"},
    "test": {"lexical": "sLM21/lexical/test", "syntactic": "sLM21/syntactic/test"},
}
VOICES = ("slt", "awb", "rms", "kal16")  # flite's 16 kHz voices (CMU ARCTIC recordings)
Voice = Literal["slt", "awb", "rms", "kal16"]


@dataclass(frozen=True)
class DemoConfig:
    """Size knobs and jitter ranges of the generated corpus (all keys of config.yaml's `demo` block)."""

    seed: int = 0
    voices: tuple[Voice, ...] = VOICES
    # Alice sentences in the training corpus; null: the whole text but the dev sentences and the tSC endings
    train_sentences: int | None = field(200, ge=1)
    train_voices_per_sentence: int = field(2, ge=1)  # each training sentence is read by this many (random) voices
    # Readings of each training sentence by each of its voices, each with its own tempo / pitch / noise draw: the
    # whole Alice text is ~26 min per voice, so hours of speech need several readings (configs/gpu_quick.yaml).
    train_readings: int = field(1, ge=1)
    # Held-out sentences per voice for ABX / PNMI. Each voice reads its own: were one sentence read by several
    # voices, across-speaker ABX could match X to A by sentence context instead of by phone.
    dev_sentences: int = field(16, ge=1)
    lexical_pairs: int = field(32, ge=1)  # sWUGGY word / nonword pairs, each read by every voice
    syntactic_pairs: int = field(32, ge=1)  # sBLIMP sentence pairs, each read by every voice
    storycloze_stories: int = field(16, ge=1)  # stories per StoryCloze task (sSC and tSC)
    max_words: int = field(18, ge=3)  # longer Alice sentences are split at commas
    tempo: tuple[float, float] = (0.85, 1.2)  # flite duration_stretch range
    pitch: tuple[float, float] = (0.85, 1.15)  # factor on the voice's median F0
    snr_db: tuple[float, float] = (15.0, 30.0)  # white noise level

    def __post_init__(self) -> None:
        if not self.voices or len(set(self.voices)) != len(self.voices):
            raise ConfigError(f"'voices' must be a non-empty list without repeats, got {list(self.voices)}")
        for name in ("tempo", "pitch", "snr_db"):
            low, high = getattr(self, name)
            if low > high or (name != "snr_db" and low <= 0):
                raise ConfigError(f"{name!r} must be a [low, high] range with low <= high (> 0 for factors), got "
                                  f"{list(getattr(self, name))}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "") -> DemoConfig:
        return load(cls, values, where)


@dataclass(frozen=True)
class ManifestConfig:
    """How `data.manifest` builds a manifest from a directory of audio (the `--config` JSON)."""

    ext: tuple[str, ...] = ("wav", "flac")  # file extensions, without the dot
    # dir: the first folder below the root (LibriSpeech); prefix: the stem up to its first '-' or '_'; single: one
    # speaker, named after the root folder (a folder of one person's recordings)
    speaker: Literal["dir", "prefix", "single"] = "dir"
    bad_audio: Literal["fail", "skip"] = "fail"  # skip: reported by name and counted
    convert: bool = False  # resample / downmix instead of rejecting other rates and multi-channel audio
    # header: soundfile's header only (rate, channels, frames), cheap at 60k h; decode: every sample read too
    # (also finds NaN/Inf, all-zero audio and bodies cut short).
    check: Literal["header", "decode"] = "header"
    # path: the path below the root without extension (`103/1240/103-1240-0000`), unique by construction;
    # stem: the file name without extension, which benchmark gold files, ABX items and feature files use (two files
    # with one stem are then an error naming both).
    ids: Literal["path", "stem"] = "path"


@dataclass(frozen=True)
class SubsetConfig:
    """A corpus made of a seeded subset of another by hours (`source: subset`; `data.subset`'s --config JSON).

    Subsets of one parent with one seed are nested: the 600 h subset is inside the 6k h one (data.subset).
    """

    of: str  # the parent corpus (any source, a subset included)
    hours: float = field(gt=0)
    seed: int = 0
