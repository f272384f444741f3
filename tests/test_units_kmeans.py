"""faiss k-means: assignment, determinism with a seed, the artefact and its provenance, the corpus sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.units_helpers import make_corpus
from units.config import EncoderSpec, RunOptions
from units.kmeans import (
    KMeansError,
    KMeansModel,
    fit_from_corpus,
    fit_kmeans,
    main,
    nearest_centroid,
    sample_plan,
)


def blobs(n: int = 600, k: int = 4, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, (k, dim))
    return (centres[rng.integers(0, k, n)] + rng.normal(0, 1, (n, dim))).astype(np.float32)


def test_nearest_centroid_equals_brute_force():
    rng = np.random.default_rng(1)
    x, c = rng.normal(size=(500, 16)), rng.normal(size=(37, 16))
    by_hand = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    ours = nearest_centroid(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(c.astype(np.float32)), chunk=64)
    assert ours.dtype == torch.int64
    np.testing.assert_array_equal(ours.numpy(), by_hand)


def test_fit_is_deterministic_for_a_seed_and_finds_the_blobs():
    x = blobs()
    c1, obj1 = fit_kmeans(x, 4, seed=3, niter=20)
    c2, obj2 = fit_kmeans(x, 4, seed=3, niter=20)
    np.testing.assert_array_equal(c1, c2)
    assert obj1 == obj2
    c3, _ = fit_kmeans(x, 4, seed=4, niter=20)
    assert not np.array_equal(c1, c3)
    labels = nearest_centroid(torch.from_numpy(x), torch.from_numpy(c1)).numpy()
    assert len(np.unique(labels)) == 4
    # Each fitted centroid is the mean of its cluster (a Lloyd fixed point on well-separated blobs).
    for j in range(4):
        np.testing.assert_allclose(c1[j], x[labels == j].mean(0), atol=1e-3)


def test_fit_errors_name_the_values():
    with pytest.raises(KMeansError, match="k=700 clusters but only 600 frames"):
        fit_kmeans(blobs(), 700, seed=0)
    with pytest.raises(KMeansError, match="k=1"):
        fit_kmeans(blobs(), 1, seed=0)


def test_artefact_roundtrip_and_mismatch_refusal(tmp_path):
    spec = EncoderSpec("hf", model="facebook/hubert-base-ls960")
    model = KMeansModel(blobs(10, dim=3), {"encoder": spec.to_dict(), "layer": 11, "k": 10})
    model.save(tmp_path / "km.npz")
    loaded = KMeansModel.load(tmp_path / "km.npz")
    np.testing.assert_array_equal(loaded.centroids, model.centroids)
    assert loaded.meta == model.meta and (loaded.k, loaded.dim) == (10, 3)
    loaded.check_matches(spec, 11)
    with pytest.raises(KMeansError, match=r"layer 11, but the units ask for .* layer 9"):
        loaded.check_matches(spec, 9)
    with pytest.raises(KMeansError, match="fitted on encoder"):
        loaded.check_matches(EncoderSpec("mfcc"), 11)
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(KMeansError, match=r"bad\.npz"):
        KMeansModel.load(tmp_path / "bad.npz")
    with pytest.raises(KMeansError, match="not found"):
        KMeansModel.load(tmp_path / "missing.npz")


def test_sample_plan_is_seeded_and_just_large_enough():
    frames = np.array([100, 50, 300, 20, 80, 10, 400])
    rows_a, rest_a = sample_plan(frames, 200, np.random.default_rng(0))
    rows_b, _ = sample_plan(frames, 200, np.random.default_rng(0))
    assert rows_a == rows_b == sorted(rows_a)
    # The shortest prefix of the seeded shuffle that reaches 200 frames.
    order = np.random.default_rng(0).permutation(len(frames))
    take = int(np.argmax(np.cumsum(frames[order]) >= 200)) + 1
    assert rows_a == sorted(order[:take].tolist())
    assert frames[rows_a].sum() >= 200 > frames[order[: take - 1]].sum()
    assert sorted(rows_a + rest_a.tolist()) == list(range(len(frames)))
    all_rows, rest = sample_plan(frames, 10_000, np.random.default_rng(0))
    assert all_rows == list(range(len(frames))) and len(rest) == 0


def test_fit_from_corpus_is_deterministic_and_records_provenance(tmp_path):
    manifest = make_corpus(tmp_path / "c", [1.0, 2.0, 1.5, 0.7, 3.0, 1.2])
    run = RunOptions(progress=False, workers=1)
    a = fit_from_corpus({"kind": "mfcc"}, 0, manifest, k=8, seed=5, max_frames=250, out=tmp_path / "a.npz", run=run)
    b = fit_from_corpus({"kind": "mfcc"}, 0, manifest, k=8, seed=5, max_frames=250, out=tmp_path / "b.npz", run=run)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.centroids.shape == (8, 39)
    meta = KMeansModel.load(tmp_path / "a.npz").meta
    assert meta["frames"] == 250 and meta["k"] == 8 and meta["seed"] == 5 and meta["layer"] == 0
    assert meta["encoder"] == {"kind": "mfcc"} and meta["manifest"] == str(manifest)
    assert len(meta["manifest_sha256"]) == 64 and "code_version" in meta["provenance"]
    c = fit_from_corpus({"kind": "mfcc"}, 0, manifest, k=8, seed=6, max_frames=250, out=tmp_path / "c.npz", run=run)
    assert not np.array_equal(a.centroids, c.centroids)


def test_cli_fit_errors_are_clear(tmp_path, capsys):
    manifest = make_corpus(tmp_path / "c", [1.0, 1.0])
    def fit(layer: int, k: int, max_frames: int, **extra) -> None:
        units = {"encoder": {"kind": "mfcc"}, "layer": layer, "quantizer": "kmeans", "k": k,
                 "fit": {"seed": 0, "max_frames": max_frames, **extra}}
        main(["fit", "--config", json.dumps(units), "--manifest", str(manifest), "--out", str(tmp_path / "k.npz"),
              "--no-progress"])

    with pytest.raises((ValueError, OSError), match="max_frames=5 < k=8"):
        fit(0, 8, 5)
    with pytest.raises((ValueError, OSError), match="layer=3 for an MFCC"):
        fit(3, 8, 50)
    with pytest.raises((ValueError, OSError), match=r"'fit\.niter': 0 is out of range; expected an integer >= 1"):
        fit(0, 4, 60, niter=0)
    with pytest.raises((ValueError, OSError), match=r"unknown key\(s\) \['fit\.iters'\]"):
        fit(0, 4, 60, iters=3)
    fit(0, 4, 60)
    assert KMeansModel.load(tmp_path / "k.npz").meta["frames"] == 60
