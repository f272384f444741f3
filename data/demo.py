"""Generate the embedded demo corpus with Debian's flite, written in the official benchmark layouts.

Usage: python -m data.demo OUT_DIR [--config '{"seed": 0, ...}']

flite's four 16 kHz voices (built from real CMU ARCTIC recordings) read the first chapters of *Alice in
Wonderland* that ship with the Debian package. Every utterance gets its own random tempo, pitch and noise
(seeded), otherwise a deterministic TTS says a phone in a context identically and ABX is trivially 0. Output:

    OUT/train/manifest.tsv, train/wav/*.wav, train/text.txt   training corpus (id, path, num_samples, speaker)
    OUT/dev/manifest.tsv, dev/wav/*.wav                          held-out sentences, each read by one voice
    OUT/dev/triphone.item, dev/phoneme.item                      ABX items (#file onset offset #phone prev next spk)
    OUT/dev/phones_100hz.jsonl                                   {"id", "phones"}: frame i = phone at (i + 0.5) * 10 ms
    OUT/dev/alignment.tsv                                        id onset offset phone
    OUT/sLM21/lexical/{dev,test}/*.wav + gold.csv                sWUGGY: words vs nonwords built from phones
    OUT/sLM21/syntactic/{dev,test}/*.wav + gold.csv              sBLIMP: grammatical vs ungrammatical sentences
    OUT/storycloze/{sSC,tSC}/<2i>_<story>_correct.wav, <2i+1>_<story>_incorrect.wav
    OUT/info.json                                                config, code version, sizes (written last)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from common.config import loads
from common.io import atomic_write_json, atomic_write_text, provenance
from data.audio import SAMPLE_RATE, write_wav
from data.config import DEMO_BENCHMARKS, DemoConfig
from data.manifest import write_manifest, write_table

DEV, TEST = DEMO_BENCHMARKS["dev"], DEMO_BENCHMARKS["test"]  # where each evaluation set is written

# flite's example texts; TEXTLESS_FLITE_EXAMPLES points elsewhere when flite is unpacked outside /usr
# (scripts/gpu_quick.sh on a machine without the Debian package).
FLITE_EXAMPLES = Path(os.environ.get("TEXTLESS_FLITE_EXAMPLES", "/usr/share/doc/flite/examples"))
ALICE = FLITE_EXAMPLES / "alice"
# Median F0 of each voice (Hz); pitch jitter scales it. rms ignores the setting (documented flite behaviour).
BASE_F0 = {"slt": 165.0, "awb": 126.0, "rms": 105.0, "kal16": 89.0}

# ARPAbet classes used to turn a word into a phonotactically plausible nonword (same-class substitution).
PHONE_CLASSES = {
    "stop": ["p", "b", "t", "d", "k", "g"],
    "fricative": ["f", "v", "th", "s", "z", "sh"],
    "nasal": ["m", "n"],
    "liquid": ["l", "r"],
    "vowel": ["aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw"],
}
PHONE_CLASS = {p: c for c, ps in PHONE_CLASSES.items() for p in ps}


class DemoError(ValueError):
    """The demo corpus cannot be generated as configured (flite missing or failing, sizes it cannot reach)."""


@dataclass
class Utterance:
    """One synthesis job: text (or phones with `phones=True`) read by `voice`, jittered with `jitter_seed`."""

    path: Path
    voice: str
    text: str
    jitter_seed: tuple[int, ...]
    phones: bool = False
    segments: list[tuple[str, float, float]] = field(default_factory=list)  # (phone, onset, offset), filled in
    num_samples: int = 0


# ---------------------------------------------------------------------------------------------------------------
# Text


def alice_sentences(max_words: int, path: Path = ALICE) -> list[str]:
    """Alice's text as lower-case sentences of 3..max_words words (long ones split at commas)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: flite's Alice text is missing; install the Debian package 'flite'")
    text = path.read_text(encoding="latin-1")
    text = re.sub(r"CHAPTER [IVX]+[.:][^\n]*", " ", text)
    text = text.replace("--", ", ").replace("`", " ").replace("_", " ")
    text = re.sub(r"'(?![a-z])|(?<![a-z])'", " ", text, flags=re.IGNORECASE)  # quotes, not apostrophes
    sentences = []
    for raw in re.split(r"(?<=[.!?;:])\s+", re.sub(r"\s+", " ", text)):
        words = re.sub(r"[^a-z' ,]", " ", raw.lower()).split()
        chunk: list[str] = []
        for w in words:
            chunk.append(w)
            if len(chunk) >= max_words or (w.endswith(",") and len(chunk) >= max_words // 2):
                sentences.append(chunk)
                chunk = []
        sentences.append(chunk)
    cleaned = [" ".join(w.strip(",'") for w in s).strip() for s in sentences]
    return [s for s in cleaned if len(s.split()) >= 3 and not s.startswith("-")]


def word_counts(sentences: Sequence[str]) -> Counter[str]:
    return Counter(w for s in sentences for w in s.split() if re.fullmatch(r"[a-z]+", w))


def pronounce(words: Sequence[str], chunk: int = 200) -> dict[str, list[str]]:
    """flite's pronunciation (phones, no stress) of each word; one flite call per chunk of words."""
    lexicon: dict[str, list[str]] = {}
    for start in range(0, len(words), chunk):
        batch = list(words[start : start + chunk])
        out = run_flite(["-voice", "slt", "-ps", "-t", ". ".join(batch) + ".", "none"])
        groups = [g.split() for g in out.split("pau") if g.strip()]
        if len(groups) != len(batch):  # a word flite splits in two: fall back to one call per word
            groups = [run_flite(["-voice", "slt", "-ps", "-t", w + ".", "none"]).replace("pau", "").split()
                      for w in batch]
        lexicon.update(zip(batch, groups, strict=True))
    return lexicon


def make_nonword(phones: list[str], rng: np.random.Generator, known: set[tuple[str, ...]]) -> list[str] | None:
    """Replace one phone by another of its class so that the result is not a known pronunciation."""
    positions = [i for i, p in enumerate(phones) if p in PHONE_CLASS]
    for i in rng.permutation(positions):
        options = [p for p in PHONE_CLASSES[PHONE_CLASS[phones[i]]] if p != phones[i]]
        for new in rng.permutation(options):
            candidate = [*phones[:i], str(new), *phones[i + 1 :]]
            if tuple(candidate) not in known:
                return candidate
    return None


# sBLIMP-style minimal pairs from a small grammar: (type, subtype, generator of (good, bad)).
CHARACTERS = ["the rabbit", "the queen", "the king", "the duchess", "the hatter", "the cat", "alice", "the mouse"]
GENDER = {"the rabbit": "him", "the queen": "her", "the king": "him", "the duchess": "her", "the hatter": "him",
          "the cat": "her", "alice": "her", "the mouse": "him"}
OBJECTS = ["key", "door", "cake", "bottle", "garden", "table", "hat", "fan", "glove", "box"]
VERBS = [("likes", "like"), ("sees", "see"), ("finds", "find"), ("follows", "follow"), ("watches", "watch")]
PAST = [("ran", "runned"), ("ate", "eated"), ("went", "goed"), ("took", "taked"), ("fell", "falled"),
        ("drank", "drinked"), ("found", "finded")]
ADJECTIVES = ["small", "golden", "large", "curious", "little", "white"]


def syntactic_pair(kind: int, rng: np.random.Generator) -> tuple[str, str, str, str]:
    """One (type, subtype, grammatical, ungrammatical) pair of the given kind."""
    who = str(rng.choice(CHARACTERS))
    obj = str(rng.choice(OBJECTS))
    match kind % 6:
        case 0:
            s, p = VERBS[rng.integers(len(VERBS))]
            return "agreement", "subject_verb", f"{who} {s} the {obj}", f"{who} {p} the {obj}"
        case 1:
            plural = str(rng.choice(["cats", "rabbits", "kings", "queens"]))
            s, p = VERBS[rng.integers(len(VERBS))]
            return "agreement", "plural_subject_verb", f"the {plural} {p} the {obj}", f"the {plural} {s} the {obj}"
        case 2:
            return "agreement", "determiner_noun", f"{who} wanted these {obj}s", f"{who} wanted this {obj}s"
        case 3:
            right = GENDER[who]
            wrong = "her" if right == "him" else "him"
            return "anaphor_agreement", "gender", f"{who} hurt {right}self", f"{who} hurt {wrong}self"
        case 4:
            good, bad = PAST[rng.integers(len(PAST))]
            return "morphology", "irregular_past", f"{who} {good} to the {obj}", f"{who} {bad} to the {obj}"
        case _:
            adj = str(rng.choice(ADJECTIVES))
            return "word_order", "adjective_noun", f"{who} saw the {adj} {obj}", f"{who} saw the {obj} {adj}"


# Spoken StoryCloze-style stories: a need, a place, a remedy; the right ending uses the remedy.
NEEDS = [("hungry", "a piece of cake", "ate the cake"), ("thirsty", "a bottle of water", "drank the water"),
         ("tired", "a soft bed", "slept in the bed"), ("cold", "a warm fire", "sat by the fire"),
         ("lost", "a map of the wood", "read the map"), ("sad", "a funny book", "laughed at the book")]
PEOPLE = [("alice", "she"), ("the rabbit", "he"), ("the queen", "she"), ("the king", "he"),
          ("the duchess", "she"), ("the hatter", "he")]
PLACES = ["house", "garden", "hall", "kitchen", "wood", "palace"]


def story(i: int, rng: np.random.Generator) -> tuple[list[str], str, str]:
    """(four context sentences, right ending, wrong ending of the same kind for sSC)."""
    name, pron = PEOPLE[rng.integers(len(PEOPLE))]
    need, thing, action = NEEDS[i % len(NEEDS)]
    other = NEEDS[(i % len(NEEDS) + 1 + rng.integers(len(NEEDS) - 1)) % len(NEEDS)][2]
    place = str(rng.choice(PLACES))
    context = [f"{name} was very {need}.", f"{pron} walked slowly into the {place}.",
               f"{pron} looked all around the {place}.", f"{pron} saw {thing} in the corner."]
    return context, f"{pron} {action} and felt much better.", f"{pron} {other} and felt much better."


# ---------------------------------------------------------------------------------------------------------------
# Synthesis


def run_flite(args: list[str]) -> str:
    if shutil.which("flite") is None:
        raise FileNotFoundError("flite not found: install the Debian package 'flite' (make demo does it)")
    out = subprocess.run(["flite", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise DemoError(f"flite {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def parse_psdur(text: str, duration: float) -> list[tuple[str, float, float]]:
    """flite's `phone:end` list -> (ARPAbet phone, onset, offset), SIL merged, the last offset = wav duration."""
    segments: list[tuple[str, float, float]] = []
    start = 0.0
    for token in text.split():
        name, end = token.rsplit(":", 1)
        phone = {"pau": "SIL", "ax": "AH"}.get(name, name.upper())
        end = min(float(end), duration)
        if end <= start:
            continue
        if segments and phone == "SIL" and segments[-1][0] == "SIL":
            segments[-1] = ("SIL", segments[-1][1], end)
        else:
            segments.append((phone, start, end))
        start = end
    if not segments:
        raise DemoError("flite returned no phone timings")
    # flite ends within ~5 ms of the wav, except kal16, which cuts its final pause: stretch the last segment.
    phone, onset, _ = segments[-1]
    segments[-1] = (phone, onset, duration)
    return segments


def synthesize(utt: Utterance, cfg: DemoConfig) -> Utterance:
    """Run flite with this utterance's jitter, add its noise, write the wav and keep the phone timings."""
    rng = np.random.default_rng(utt.jitter_seed)
    tempo = rng.uniform(*cfg.tempo)
    f0 = BASE_F0[utt.voice] * rng.uniform(*cfg.pitch)
    snr = rng.uniform(*cfg.snr_db)
    utt.path.parent.mkdir(parents=True, exist_ok=True)
    raw = utt.path.with_name(f".{utt.path.stem}.flite.wav")
    args = ["-voice", utt.voice, "-psdur", "--setf", f"duration_stretch={tempo:.4f}",
            "--setf", f"int_f0_target_mean={f0:.2f}"]
    args += ["-p", utt.text, str(raw)] if utt.phones else ["-t", utt.text, "-o", str(raw)]
    timings = run_flite(args)
    wav, rate = sf.read(str(raw), dtype="float32")
    raw.unlink()
    if rate != SAMPLE_RATE or wav.ndim != 1:
        raise DemoError(f"flite voice {utt.voice} wrote {rate} Hz / {wav.ndim}-D audio, expected 16 kHz mono")
    power = float(np.mean(wav**2)) or 1e-8
    wav = wav + rng.normal(0.0, np.sqrt(power / 10 ** (snr / 10)), size=wav.shape).astype(np.float32)
    write_wav(utt.path, wav)
    utt.num_samples = len(wav)
    utt.segments = parse_psdur(timings, len(wav) / SAMPLE_RATE)
    return utt


def synthesize_all(utts: list[Utterance], cfg: DemoConfig, threads: int) -> None:
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(lambda u: synthesize(u, cfg), utts))


# ---------------------------------------------------------------------------------------------------------------
# Layouts


def abx_items(utt_id: str, speaker: str, segments: list[tuple[str, float, float]]) -> tuple[list, list]:
    """Triphone items (onset of the previous phone .. offset of the next) and phoneme items (the phone alone).

    Items whose phone or a neighbour is SIL are dropped, as the ZeroSpeech / Libri-Light item tools do.
    """
    triphone, phoneme = [], []
    for k in range(1, len(segments) - 1):
        (prev, p_on, _), (phone, on, off), (nxt, _, n_off) = segments[k - 1], segments[k], segments[k + 1]
        if "SIL" in (prev, phone, nxt):
            continue
        triphone.append((utt_id, round(p_on, 4), round(n_off, 4), phone, prev, nxt, speaker))
        phoneme.append((utt_id, round(on, 4), round(off, 4), phone, prev, nxt, speaker))
    return triphone, phoneme


def frame_labels(segments: list[tuple[str, float, float]], num_samples: int, rate: float = 100.0) -> list[str]:
    """Phone label of each frame: frame i is the phone covering (i + 0.5) / rate; floor(duration * rate) frames."""
    n = int(num_samples / SAMPLE_RATE * rate)
    ends = np.array([off for _, _, off in segments])
    centres = (np.arange(n) + 0.5) / rate
    idx = np.minimum(np.searchsorted(ends, centres, side="left"), len(segments) - 1)
    return [segments[i][0] for i in idx]


def write_item_file(rows: list[tuple], path: Path) -> None:
    header = "#file onset offset #phone prev-phone next-phone speaker\n"
    atomic_write_text(path, header + "".join(" ".join(map(str, r)) + "\n" for r in rows))


def opaque_ids(n: int, rng: np.random.Generator) -> list[str]:
    """sLM21 names its wavs with random letters, so names leak nothing about the item."""
    letters = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < n:
        name = "".join(rng.choice(letters, size=11))
        if name not in seen:
            seen.add(name)
            ids.append(name)
    return ids


def lexical_split(folder: Path, candidates: list[str], lexicon: dict[str, list[str]], known: set[tuple[str, ...]],
                  counts: Counter[str], cfg: DemoConfig, rng: np.random.Generator,
                  stream: int) -> tuple[list[Utterance], list[dict], list[str]]:
    """sWUGGY pairs of one set: a word and a nonword (new to `known`, which grows) read by every voice; returns the
    synthesis jobs, the gold rows and the words used. `stream` keys the utterances' jitter."""
    voices = list(cfg.voices)
    utts: list[Utterance] = []
    rows: list[dict] = []
    used: list[str] = []
    names = iter(opaque_ids(2 * cfg.lexical_pairs * len(voices), rng))
    pair_id = 0
    for w in rng.permutation(candidates):
        if pair_id == cfg.lexical_pairs:
            break
        nonword = make_nonword(lexicon[str(w)], rng, known)
        if nonword is None:
            continue
        known.add(tuple(nonword))
        used.append(str(w))
        for v, voice in enumerate(voices):
            for correct, phones in ((1, lexicon[str(w)]), (0, nonword)):
                name = next(names)
                utts.append(Utterance(folder / f"{name}.wav", voice, "pau " + " ".join(phones) + " pau",
                                      (cfg.seed, stream, pair_id, v), phones=True))
                rows.append({"filename": name, "id": pair_id, "voice": voice, "frequency": counts.get(str(w), 0),
                             "word": str(w) if correct else "", "phones": " ".join(phones),
                             "length": len(phones), "correct": correct})
        pair_id += 1
    if pair_id < cfg.lexical_pairs:
        raise DemoError(f"could only build {pair_id} of {cfg.lexical_pairs} lexical pairs for {folder.name}")
    return utts, rows, used


def draw_new_pair(pair_id: int, seen_pairs: set[tuple[str, str]], rng: np.random.Generator,
                  draws: int = 200) -> tuple[str, str, str, str] | None:
    """A pair of kind `pair_id` (mod 6) not in `seen_pairs`; once a kind is used up (e.g. the 8 gender pairs, shared
    by dev and test), the next kind; None when every kind is used up."""
    for shift in range(6):
        for _ in range(draws):
            pair = syntactic_pair(pair_id + shift, rng)
            if (pair[2], pair[3]) not in seen_pairs:
                return pair
    return None


def syntactic_split(folder: Path, seen_pairs: set[tuple[str, str]], cfg: DemoConfig, rng: np.random.Generator,
                    stream: int) -> tuple[list[Utterance], list[dict]]:
    """sBLIMP pairs of one set, none in `seen_pairs` (which grows), read by every voice: jobs and gold rows."""
    voices = list(cfg.voices)
    utts: list[Utterance] = []
    rows: list[dict] = []
    names = iter(opaque_ids(2 * cfg.syntactic_pairs * len(voices), rng))
    pair_id = 0
    while pair_id < cfg.syntactic_pairs:
        drawn = draw_new_pair(pair_id, seen_pairs, rng)
        if drawn is None:
            raise DemoError(f"could only build {pair_id} of {cfg.syntactic_pairs} syntactic pairs for {folder.name} "
                            "that no earlier set has: lower syntactic_pairs")
        kind, subtype, good, bad = drawn
        seen_pairs.add((good, bad))
        for v, voice in enumerate(voices):
            for correct, text in ((1, good), (0, bad)):
                name = next(names)
                utts.append(Utterance(folder / f"{name}.wav", voice, text, (cfg.seed, stream, pair_id, v)))
                rows.append({"filename": name, "id": pair_id, "voice": voice, "type": kind,
                             "subtype": subtype, "transcription": text, "correct": correct})
        pair_id += 1
    return utts, rows


def generate(out: str | Path, cfg: DemoConfig, threads: int = 2) -> dict:
    """Build every layout below `out`; info.json is written last, so its presence means the corpus is complete."""
    out = Path(out)
    for owned in ("train", "dev", "sLM21", "storycloze", "info.json"):  # no stale files from an earlier config
        target = out / owned
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    rng = np.random.default_rng(cfg.seed)
    sentences = alice_sentences(cfg.max_words)
    order = rng.permutation(len(sentences))
    # Dev sentences are held out from training; prefer mid-length ones so items are plentiful but files short.
    mid = [i for i in order if 6 <= len(sentences[i].split()) <= 14]
    dev_idx = mid[: cfg.dev_sentences * len(cfg.voices)]
    rest = [i for i in order if i not in set(dev_idx)]
    # The whole text (train_sentences null) keeps one sentence per story back for tSC's random endings.
    train_idx = rest[: cfg.train_sentences] if cfg.train_sentences is not None else rest[cfg.storycloze_stories :]
    if len(dev_idx) < cfg.dev_sentences * len(cfg.voices) or len(train_idx) < (cfg.train_sentences or 1):
        raise DemoError(f"demo config asks for {cfg.train_sentences} train + {cfg.dev_sentences} x "
                        f"{len(cfg.voices)} voices dev sentences; "
                        f"the Alice text has {len(sentences)} ({len(mid)} of dev length)")
    train_text = [sentences[i] for i in train_idx]
    voices = list(cfg.voices)

    jobs: dict[str, list[Utterance]] = {"train": [], "dev": [], "lexical": [], "syntactic": [], "sSC": [], "tSC": []}
    for n, i in enumerate(train_idx):
        for voice in rng.choice(voices, size=min(cfg.train_voices_per_sentence, len(voices)), replace=False):
            v = voices.index(voice)
            for r in range(cfg.train_readings):  # the first reading keeps the one-reading corpus's id and jitter
                uid = f"{voice}-train{n:04d}" + (f"r{r}" if r else "")
                jobs["train"].append(Utterance(out / "train/wav" / f"{uid}.wav", str(voice), sentences[i],
                                               (cfg.seed, 1, n, v) + ((r,) if r else ())))
    for n, i in enumerate(dev_idx):
        v = n % len(voices)
        uid = f"{voices[v]}-dev{n:04d}"
        jobs["dev"].append(Utterance(out / "dev/wav" / f"{uid}.wav", voices[v], sentences[i], (cfg.seed, 2, n, v)))

    # sWUGGY: words from the training text and from flite's other example text (out-of-vocabulary words).
    counts = word_counts(train_text)
    extra = word_counts([(FLITE_EXAMPLES / "intro.txt").read_text(encoding="latin-1").lower()]) \
        if (FLITE_EXAMPLES / "intro.txt").is_file() else Counter()
    all_words = sorted(set(word_counts(sentences)) | set(extra))
    lexicon = pronounce(all_words)
    known = {tuple(p) for p in lexicon.values()}
    candidates = [w for w in all_words if 3 <= len(lexicon[w]) <= 8 and len(w) >= 3]
    jobs["lexical"], lex_rows, dev_words = lexical_split(out / DEV["lexical"], candidates, lexicon, known,
                                                         counts, cfg, rng, stream=3)
    seen_pairs: set[tuple[str, str]] = set()
    jobs["syntactic"], syn_rows = syntactic_split(out / DEV["syntactic"], seen_pairs, cfg, rng, stream=4)
    # The sLM21 test split: its own words and sentence pairs, disjoint from dev's, drawn from a generator of its
    # own so that every other file of the corpus is the same as without it (zrc validates dev and test together).
    test_rng = np.random.default_rng([cfg.seed, 6])
    jobs["lexical_test"], lex_test_rows, _ = lexical_split(
        out / TEST["lexical"], [w for w in candidates if w not in set(dev_words)], lexicon, known, counts, cfg,
        test_rng, stream=6)
    jobs["syntactic_test"], syn_test_rows = syntactic_split(out / TEST["syntactic"], seen_pairs, cfg, test_rng,
                                                            stream=7)

    # StoryCloze: one voice per story, the same jitter for both endings so only the content differs.
    held_out = [sentences[i] + "." for i in order if i not in set(train_idx) and i not in set(dev_idx)]
    for s in range(cfg.storycloze_stories):
        context, right, wrong = story(s, rng)
        voice = voices[s % len(voices)]
        random_ending = held_out[s % len(held_out)] if held_out else sentences[dev_idx[0]] + "."
        for task, negative in (("sSC", wrong), ("tSC", random_ending)):
            for k, (label, ending) in enumerate((("correct", right), ("incorrect", negative))):
                path = out / DEV[task] / f"{2 * s + k}_story{s:03d}_{label}.wav"
                jobs[task].append(Utterance(path, voice, " ".join([*context, ending]), (cfg.seed, 5, s)))

    all_jobs = [u for group in jobs.values() for u in group]
    print(f"synthesizing {len(all_jobs)} utterances with flite ({threads} threads)", file=sys.stderr)
    synthesize_all(all_jobs, cfg, threads)

    # Manifests, items, labels, gold files.
    for split in ("train", "dev"):
        table = pd.DataFrame([(u.path.stem, str(u.path), u.num_samples, u.voice) for u in jobs[split]],
                             columns=["id", "path", "num_samples", "speaker"])
        write_manifest(table, out / split / "manifest.tsv")
    atomic_write_text(out / "train/text.txt", "".join(s + "\n" for s in train_text))
    triphone, phoneme, labels, alignment = [], [], [], []
    for u in jobs["dev"]:
        t, p = abx_items(u.path.stem, u.voice, u.segments)
        triphone += t
        phoneme += p
        labels.append(json.dumps({"id": u.path.stem, "phones": frame_labels(u.segments, u.num_samples)}) + "\n")
        alignment += [(u.path.stem, round(on, 4), round(off, 4), ph) for ph, on, off in u.segments]
    write_item_file(triphone, out / DEV["triphone_item"])
    write_item_file(phoneme, out / DEV["phoneme_item"])
    atomic_write_text(out / DEV["phones"], "".join(labels))
    write_table(pd.DataFrame(alignment, columns=["id", "onset", "offset", "phone"]), out / "dev/alignment.tsv")
    pd.DataFrame(lex_rows).to_csv(out / DEV["lexical"] / "gold.csv", index=False)
    pd.DataFrame(syn_rows).to_csv(out / DEV["syntactic"] / "gold.csv", index=False)
    pd.DataFrame(lex_test_rows).to_csv(out / TEST["lexical"] / "gold.csv", index=False)
    pd.DataFrame(syn_test_rows).to_csv(out / TEST["syntactic"] / "gold.csv", index=False)

    hours = {k: sum(u.num_samples for u in v) / SAMPLE_RATE / 3600 for k, v in jobs.items()}
    info = {"counts": {k: len(v) for k, v in jobs.items()}, "hours": hours, "abx_items": len(triphone),
            **provenance(dataclasses.asdict(cfg))}
    atomic_write_json(out / "info.json", info)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--config", default="{}", help="JSON object of DemoConfig fields")
    parser.add_argument("--threads", type=int, default=2, help="parallel flite processes")
    args = parser.parse_args(argv)
    cfg = loads(DemoConfig, args.config)
    info = generate(args.out, cfg, args.threads)
    print(json.dumps({"counts": info["counts"], "hours": info["hours"], "abx_items": info["abx_items"]}))


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
