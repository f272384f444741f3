"""Tests of the data stage: demo corpus layouts, alignments, items, determinism, manifests and bad audio."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data.audio import SAMPLE_RATE, BadAudioError, check_audio, load_audio
from data.demo import DemoConfig, abx_items, frame_labels, generate, make_nonword, parse_psdur
from data.manifest import ManifestError, build_manifest, read_manifest
from tests.conftest import SMALL_DEMO, require_flite

ARPABET = {"AA", "AE", "AH", "AO", "AW", "AY", "B", "CH", "D", "DH", "EH", "ER", "EY", "F", "G", "HH", "IH", "IY",
           "JH", "K", "L", "M", "N", "NG", "OW", "OY", "P", "R", "S", "SH", "T", "TH", "UH", "UW", "V", "W", "Y", "Z",
           "ZH", "SIL"}


def durations(manifest: pd.DataFrame) -> dict[str, float]:
    return dict(zip(manifest["id"], manifest["num_samples"] / SAMPLE_RATE, strict=True))


# --- layouts ------------------------------------------------------------------------------------------------------


def test_manifests_point_at_16k_mono_audio(demo_corpus: Path) -> None:
    for split, n_voices in (("train", SMALL_DEMO["train_voices_per_sentence"]), ("dev", 4)):
        table = read_manifest(demo_corpus / split / "manifest.tsv")
        assert list(table.columns) == ["id", "path", "num_samples", "speaker"]
        assert len(table) == SMALL_DEMO[f"{split}_sentences"] * n_voices
        assert table["id"].is_unique
        for row in table.itertuples():
            info = sf.info(row.path)
            assert (info.samplerate, info.channels, info.frames) == (SAMPLE_RATE, 1, row.num_samples)
            assert row.id.startswith(row.speaker)
    # Dev sentences are held out: no dev text is in the training text.
    assert set(read_manifest(demo_corpus / "dev/manifest.tsv")["speaker"]) == {"slt", "awb", "rms", "kal16"}


def test_lexical_gold_is_sLM21_shaped(demo_corpus: Path) -> None:
    root = demo_corpus / "sLM21/lexical/dev"
    gold = pd.read_csv(root / "gold.csv")
    assert list(gold.columns) == ["filename", "id", "voice", "frequency", "word", "phones", "length", "correct"]
    assert len(gold) == SMALL_DEMO["lexical_pairs"] * 4 * 2
    assert sorted(p.stem for p in root.glob("*.wav")) == sorted(gold["filename"])
    for (pair, voice), group in gold.groupby(["id", "voice"]):
        assert sorted(group["correct"]) == [0, 1], (pair, voice)
        word, nonword = group[group.correct == 1].iloc[0], group[group.correct == 0].iloc[0]
        assert word["phones"] != nonword["phones"]
        assert word["length"] == nonword["length"] == len(word["phones"].split())
        assert isinstance(word["word"], str) and pd.isna(nonword["word"])
    # frequency = count in the training text, so in-vocab scoring has something to select.
    text = (demo_corpus / "train/text.txt").read_text().split()
    for row in gold[gold.correct == 1].itertuples():
        assert row.frequency == text.count(row.word)


def test_syntactic_gold_pairs_by_row_order(demo_corpus: Path) -> None:
    root = demo_corpus / "sLM21/syntactic/dev"
    gold = pd.read_csv(root / "gold.csv")
    assert list(gold.columns) == ["filename", "id", "voice", "type", "subtype", "transcription", "correct"]
    assert sorted(p.stem for p in root.glob("*.wav")) == sorted(gold["filename"])
    # The official scorer pairs the correct==1 and correct==0 slices by position.
    good, bad = gold[gold.correct == 1].reset_index(), gold[gold.correct == 0].reset_index()
    assert len(good) == len(bad) == SMALL_DEMO["syntactic_pairs"] * 4
    assert (good[["id", "voice", "type", "subtype"]] == bad[["id", "voice", "type", "subtype"]]).all().all()
    assert (good["transcription"] != bad["transcription"]).all()
    assert gold["type"].nunique() >= 3


def test_storycloze_folders(demo_corpus: Path) -> None:
    for task in ("sSC", "tSC"):
        names = sorted((demo_corpus / "storycloze" / task).glob("*.wav"), key=lambda p: int(p.stem.split("_")[0]))
        assert len(names) == 2 * SMALL_DEMO["storycloze_stories"]
        for i in range(0, len(names), 2):
            good, bad = names[i].stem.split("_"), names[i + 1].stem.split("_")
            assert (int(good[0]), good[2]) == (i, "correct") and (int(bad[0]), bad[2]) == (i + 1, "incorrect")
            assert good[1] == bad[1]  # same story


# --- alignments, items, frame labels --------------------------------------------------------------------------------


def test_alignment_covers_each_wav(demo_corpus: Path) -> None:
    dur = durations(read_manifest(demo_corpus / "dev/manifest.tsv"))
    alignment = pd.read_csv(demo_corpus / "dev/alignment.tsv", sep="\t")
    assert set(alignment["phone"]) <= ARPABET
    for uid, seg in alignment.groupby("id", sort=False):
        assert seg["onset"].iloc[0] == 0.0
        assert np.allclose(seg["onset"].to_numpy()[1:], seg["offset"].to_numpy()[:-1], atol=1e-4)  # no gaps
        assert (seg["offset"] > seg["onset"]).all()
        assert abs(seg["offset"].iloc[-1] - dur[uid]) < 0.01
        assert seg["phone"].iloc[0] == "SIL" and (seg["phone"] != "SIL").sum() >= 5


@pytest.mark.parametrize("kind", ["triphone", "phoneme"])
def test_item_files(demo_corpus: Path, kind: str) -> None:
    dur = durations(read_manifest(demo_corpus / "dev/manifest.tsv"))
    path = demo_corpus / f"dev/{kind}.item"
    assert path.read_text().splitlines()[0] == "#file onset offset #phone prev-phone next-phone speaker"
    items = pd.read_csv(path, sep=" ")
    assert len(items) > 50
    assert set(items["#file"]) <= set(dur)
    assert not (items[["#phone", "prev-phone", "next-phone"]] == "SIL").any().any()
    # Every item lies in its file, and at 50 Hz (frame i at 10 ms + 20 ms * i) it holds at least one frame.
    for row in items.itertuples():
        assert 0 <= row.onset < row.offset <= dur[row._1] + 1e-6
        first = math.ceil((row.onset - 0.01) / 0.02 - 1e-9)
        last = math.floor((row.offset - 0.01) / 0.02 + 1e-9)
        assert last >= first
        assert last < int(dur[row._1] * 50)


def test_triphone_items_span_their_context(demo_corpus: Path) -> None:
    tri = pd.read_csv(demo_corpus / "dev/triphone.item", sep=" ")
    pho = pd.read_csv(demo_corpus / "dev/phoneme.item", sep=" ")
    assert len(tri) == len(pho)
    assert (tri["onset"] < pho["onset"]).all() and (tri["offset"] > pho["offset"]).all()


def test_frame_labels_at_100hz(demo_corpus: Path) -> None:
    dur = durations(read_manifest(demo_corpus / "dev/manifest.tsv"))
    alignment = pd.read_csv(demo_corpus / "dev/alignment.tsv", sep="\t")
    lines = [json.loads(x) for x in (demo_corpus / "dev/phones_100hz.jsonl").read_text().splitlines()]
    assert {x["id"] for x in lines} == set(dur)
    for x in lines:
        assert len(x["phones"]) == int(dur[x["id"]] * 100)
        seg = alignment[alignment["id"] == x["id"]]
        # Frame i carries the phone that covers its centre (i + 0.5) * 10 ms.
        for i in (0, len(x["phones"]) // 2, len(x["phones"]) - 1):
            t = (i + 0.5) / 100
            hit = seg[(seg.onset <= t) & (t <= seg.offset)]
            assert x["phones"][i] in set(hit["phone"])


def test_frame_labels_and_items_on_a_hand_made_alignment() -> None:
    segs = [("SIL", 0.0, 0.1), ("K", 0.1, 0.15), ("AE", 0.15, 0.3), ("T", 0.3, 0.35), ("SIL", 0.35, 0.5)]
    labels = frame_labels(segs, num_samples=8000)
    assert len(labels) == 50
    assert labels[:10] == ["SIL"] * 10 and labels[10:15] == ["K"] * 5 and labels[15:30] == ["AE"] * 15
    tri, pho = abx_items("u", "spk", segs)
    assert tri == [("u", 0.1, 0.35, "AE", "K", "T", "spk")]
    assert pho == [("u", 0.15, 0.3, "AE", "K", "T", "spk")]


def test_parse_psdur_maps_phones_and_clips_to_the_wav() -> None:
    segs = parse_psdur("pau:0.2 dh:0.25 ax:0.3 pau:0.35 pau:0.6", duration=0.5)
    assert segs == [("SIL", 0.0, 0.2), ("DH", 0.2, 0.25), ("AH", 0.25, 0.3), ("SIL", 0.3, 0.5)]
    # A final pause cut short (flite kal16) is stretched to the wav's end.
    assert parse_psdur("pau:0.1 b:0.2", duration=0.3)[-1] == ("B", 0.1, 0.3)


def test_nonwords_change_one_phone_within_its_class() -> None:
    rng = np.random.default_rng(0)
    word = ["b", "r", "ih", "k"]
    known = {tuple(word), ("p", "r", "ih", "k")}
    for _ in range(20):
        new = make_nonword(word, rng, known)
        assert new is not None and tuple(new) not in known
        assert sum(a != b for a, b in zip(word, new, strict=True)) == 1


# --- determinism ----------------------------------------------------------------------------------------------------


@pytest.mark.slow  # generates a corpus or a data tree: more than a few seconds
def test_same_seed_same_corpus_other_seed_other_jitter(tmp_path: Path, demo_corpus: Path) -> None:
    require_flite()
    again = tmp_path / "again"
    generate(again, DemoConfig.from_dict(SMALL_DEMO), threads=1)
    for rel in ("train/manifest.tsv", "dev/triphone.item", "dev/phones_100hz.jsonl", "sLM21/lexical/dev/gold.csv",
                "sLM21/syntactic/dev/gold.csv"):
        assert (again / rel).read_bytes() == (demo_corpus / rel).read_bytes(), rel
    wav = next((demo_corpus / "dev/wav").glob("*.wav")).name
    assert np.array_equal(sf.read(again / "dev/wav" / wav)[0], sf.read(demo_corpus / "dev/wav" / wav)[0])

    other = tmp_path / "other"
    generate(other, DemoConfig.from_dict({**SMALL_DEMO, "seed": 1}), threads=2)
    assert (other / "dev/manifest.tsv").read_bytes() != (demo_corpus / "dev/manifest.tsv").read_bytes()


def test_bad_demo_config_names_the_key() -> None:
    with pytest.raises(ValueError, match="train_sentence"):
        DemoConfig.from_dict({"train_sentence": 3})
    with pytest.raises(ValueError, match="nosuchvoice"):
        DemoConfig.from_dict({"voices": ["nosuchvoice"]})


# --- manifests from directories and bad audio ------------------------------------------------------------------------


def make_librispeech_like(root: Path) -> None:
    rng = np.random.default_rng(0)
    for spk, chap in (("19", "198"), ("26", "495")):
        for i in range(2):
            path = root / spk / chap / f"{spk}-{chap}-{i:04d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, rng.normal(0, 0.1, 16000 + 100 * i).astype(np.float32), SAMPLE_RATE)


def make_bad_files(root: Path) -> dict[str, str]:
    """One file per kind of bad audio, with the phrase its error message must contain."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "9-0-notaudio.wav").write_text("this is not a wav file")
    sf.write(root / "9-0-empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    sf.write(root / "9-0-short.wav", np.zeros(100, np.float32), SAMPLE_RATE)
    sf.write(root / "9-0-rate.wav", np.full(8000, 0.1, np.float32), 8000)  # not silent: usable with convert
    sf.write(root / "9-0-stereo.wav", np.full((16000, 2), 0.1, np.float32), SAMPLE_RATE)
    nan = np.zeros(16000, np.float32)
    nan[5] = np.nan
    sf.write(root / "9-0-nan.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    (root / "9-0-loop.wav").symlink_to("9-0-loop.wav")  # a symlink loop: once silently left out
    (root / "9-0-dangling.wav").symlink_to("nowhere.wav")
    return {"notaudio": "unreadable", "empty": "empty", "short": "too short", "rate": "sample rate 8000",
            "stereo": "2 channels", "nan": "NaN", "loop": "symlink that cannot be followed (Too many levels",
            "dangling": "symlink that cannot be followed (No such file"}


def test_manifest_from_librispeech_layout(tmp_path: Path) -> None:
    make_librispeech_like(tmp_path / "ls")
    table = build_manifest(tmp_path / "ls", tmp_path / "out/manifest.tsv", speaker="dir")
    assert list(table["id"]) == ["19/198/19-198-0000", "19/198/19-198-0001", "26/495/26-495-0000",
                                 "26/495/26-495-0001"]  # the path below the root: unique by construction
    assert list(table["speaker"]) == ["19", "19", "26", "26"]
    back = read_manifest(tmp_path / "out/manifest.tsv")
    assert back["id"].tolist() == table["id"].tolist()
    assert list(back["num_samples"]) == [16000, 16100, 16000, 16100]
    assert all(Path(p).is_file() for p in back["path"])
    stems = build_manifest(tmp_path / "ls", tmp_path / "stems.tsv", speaker="dir", ids="stem")
    assert list(stems["id"]) == ["19-198-0000", "19-198-0001", "26-495-0000", "26-495-0001"]


def test_ids_from_relative_paths_are_unique_where_stems_repeat(tmp_path: Path) -> None:
    # Libri-Light after cut_by_vad: every book's segments are named <book>_<index>, so stems repeat across speakers.
    for speaker in ("100", "200"):
        path = tmp_path / "ll" / speaker / "book" / "book_0000.flac"
        path.parent.mkdir(parents=True)
        sf.write(path, np.full(16000, 0.1, np.float32), SAMPLE_RATE)
    sf.write(tmp_path / "ll/100/book/book_0001.wav", np.full(800, 0.1, np.float32), SAMPLE_RATE)  # wav next to flac
    table = build_manifest(tmp_path / "ll", tmp_path / "m.tsv", speaker="dir", log=io.StringIO())
    assert table["id"].tolist() == ["100/book/book_0000", "100/book/book_0001", "200/book/book_0000"]
    assert table["num_samples"].tolist() == [16000, 800, 16000]
    with pytest.raises(ManifestError) as err:
        build_manifest(tmp_path / "ll", tmp_path / "s.tsv", speaker="dir", ids="stem", log=io.StringIO())
    message = str(err.value)
    assert "book_0000: " in message and "stems (ids: stem) must be unique" in message
    assert str(tmp_path / "ll/100/book/book_0000.flac") in message
    assert str(tmp_path / "ll/200/book/book_0000.flac") in message
    assert not (tmp_path / "s.tsv").exists()
    # The same name with two extensions is one id even with path ids: both files are named.
    sf.write(tmp_path / "ll/200/book/book_0000.wav", np.full(16000, 0.1, np.float32), SAMPLE_RATE)
    with pytest.raises(ManifestError, match=r"200/book/book_0000: .*book_0000\.flac and .*book_0000\.wav"):
        build_manifest(tmp_path / "ll", tmp_path / "m.tsv", speaker="dir", log=io.StringIO())


@pytest.mark.parametrize("check", ["header", "decode"])
def test_bad_audio_fail_policy_names_every_file(tmp_path: Path, check: str) -> None:
    make_librispeech_like(tmp_path / "ls")
    expected = make_bad_files(tmp_path / "ls/9/0")
    if check == "header":
        del expected["nan"]  # only a decode finds non-finite samples
    with pytest.raises(ManifestError) as err:
        build_manifest(tmp_path / "ls", tmp_path / "manifest.tsv", speaker="dir", check=check)
    message = str(err.value)
    assert f"{len(expected)} bad audio file(s)" in message
    for stem, phrase in expected.items():
        line = next(x for x in message.splitlines() if f"9-0-{stem}." in x)
        assert phrase in line, line
    if check == "header":
        assert "9-0-nan." not in message
    assert not (tmp_path / "manifest.tsv").exists()  # nothing half-written


def test_header_check_reads_headers_and_decode_check_reads_samples(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    nan = np.full(16000, 0.1, np.float32)
    nan[7] = np.inf
    sf.write(root / "a-inf.wav", nan, SAMPLE_RATE, subtype="FLOAT")
    sf.write(root / "a-silent.flac", np.zeros(16000, np.float32), SAMPLE_RATE)
    sf.write(root / "a-good.flac", np.full(16000, 0.1, np.float32), SAMPLE_RATE)
    header = build_manifest(root, tmp_path / "h.tsv", speaker="prefix", log=io.StringIO())
    assert header["id"].tolist() == ["a-good", "a-inf", "a-silent"]  # a header cannot tell
    assert header["num_samples"].tolist() == [16000, 16000, 16000]
    log = io.StringIO()
    decoded = build_manifest(root, tmp_path / "d.tsv", speaker="prefix", check="decode", bad_audio="skip", log=log)
    assert decoded["id"].tolist() == ["a-good"] and decoded["num_samples"].tolist() == [16000]
    assert "a-inf.wav: contains NaN or Inf" in log.getvalue() and "a-silent.flac: silent" in log.getvalue()
    assert "(decode check, path ids)" in log.getvalue()
    calls = []
    real_read = sf.read
    with pytest.MonkeyPatch.context() as mp:  # the default never decodes a sample
        mp.setattr(sf, "read", lambda *a, **k: calls.append(a) or real_read(*a, **k))
        build_manifest(root, tmp_path / "h2.tsv", speaker="prefix", log=io.StringIO())
        assert calls == []
        build_manifest(root, tmp_path / "d2.tsv", speaker="prefix", check="decode", bad_audio="skip",
                       log=io.StringIO())
        assert len(calls) == 3


def test_bad_audio_skip_policy_counts_and_logs(tmp_path: Path) -> None:
    make_librispeech_like(tmp_path / "ls")
    expected = make_bad_files(tmp_path / "ls/9/0")
    log = tmp_path / "log.txt"
    with log.open("w") as handle:
        table = build_manifest(tmp_path / "ls", tmp_path / "manifest.tsv", speaker="dir", bad_audio="skip",
                               check="decode", log=handle)
    assert len(table) == 4
    skipped = pd.read_csv(tmp_path / "manifest.skipped.tsv", sep="\t")
    assert sorted(Path(p).name for p in skipped["path"]) == sorted(f"9-0-{stem}.wav" for stem in expected)
    text = log.read_text()
    assert "4 files, 8 skipped" in text and text.count("bad audio:") == 8
    assert "9-0-loop.wav: symlink that cannot be followed" in text


def test_convert_accepts_other_rates_and_channels(tmp_path: Path) -> None:
    make_bad_files(tmp_path)
    assert check_audio(tmp_path / "9-0-rate.wav", convert=True).problem is None
    assert check_audio(tmp_path / "9-0-stereo.wav", convert=True).problem is None
    assert len(load_audio(tmp_path / "9-0-rate.wav")) == 16000
    assert load_audio(tmp_path / "9-0-stereo.wav").ndim == 1
    with pytest.raises(BadAudioError, match=r"9-0-rate\.wav"):
        load_audio(tmp_path / "9-0-rate.wav", convert=False)
    with pytest.raises(BadAudioError, match=r"9-0-nan\.wav"):
        load_audio(tmp_path / "9-0-nan.wav")


def test_manifest_cli_reports_the_error(tmp_path: Path) -> None:
    make_bad_files(tmp_path / "bad/9/0")
    out = subprocess.run([sys.executable, "-m", "data.manifest", str(tmp_path / "bad"), str(tmp_path / "m.tsv")],
                         capture_output=True, text=True)
    assert out.returncode != 0 and "9-0-notaudio.wav" in out.stderr


def test_manifest_config_names_a_bad_check_or_id_rule() -> None:
    from common.config import ConfigError, loads
    from data.config import ManifestConfig

    assert loads(ManifestConfig, '{"check": "decode", "ids": "stem"}') == ManifestConfig(check="decode", ids="stem")
    for key, value in (("check", "full"), ("ids", "stems")):
        with pytest.raises(ConfigError, match=rf"{key}.*{value}"):
            loads(ManifestConfig, f'{{"{key}": "{value}"}}')


def test_read_manifest_rejects_missing_columns(tmp_path: Path) -> None:
    (tmp_path / "m.tsv").write_text("id\tpath\nx\ty.wav\n")
    with pytest.raises(ManifestError, match=r"m\.tsv.*num_samples"):
        read_manifest(tmp_path / "m.tsv")


def test_read_manifest_rejects_a_truncated_file_and_keeps_speaker_na(tmp_path: Path) -> None:
    good = "id\tpath\tnum_samples\tspeaker\na\ta.wav\t16000\tNA\nb\tb.wav\t16000\ts2\n"
    (tmp_path / "m.tsv").write_text(good)
    table = read_manifest(tmp_path / "m.tsv")
    assert table["speaker"].tolist() == ["NA", "s2"] and table["num_samples"].dtype == np.int64
    (tmp_path / "m.tsv").write_text(good[: good.index("\t16000\ts2")])  # cut inside the last row
    with pytest.raises(ManifestError, match=r"m\.tsv: .*line\(s\) \[3\].*truncated or corrupt; delete it"):
        read_manifest(tmp_path / "m.tsv")


def test_default_sizes_give_disjoint_dev_and_test_syntactic_pairs(tmp_path: Path) -> None:
    """The default demo asks for 32 + 32 pairs; a kind with fewer distinct pairs than both sets need (8 gender
    pairs) gives way to the next kind instead of drawing forever; an impossible request is an error."""
    from data.demo import syntactic_split

    cfg, seen = DemoConfig(), set()
    rng = np.random.default_rng(0)
    _, dev = syntactic_split(tmp_path / "dev", seen, cfg, rng, stream=4)
    _, test = syntactic_split(tmp_path / "test", seen, cfg, rng, stream=5)
    pairs = [{r["transcription"] for r in rows if r["correct"] == 1} for rows in (dev, test)]
    assert len(pairs[0]) == len(pairs[1]) == cfg.syntactic_pairs and not pairs[0] & pairs[1]
    with pytest.raises(ValueError, match=r"could only build .* syntactic pairs for many"):
        syntactic_split(tmp_path / "many", seen, DemoConfig(syntactic_pairs=5000), rng, stream=6)
