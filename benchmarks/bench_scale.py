"""Scale behaviour of the CPU-side stages: peak RSS and throughput of each stage at 1x and 20x the demo, as JSON.

Usage: python -m benchmarks.bench_scale [--scales 1 20] [--shards 4] [--spidr-scales 1 20] [--shard-hours 0.04]
                                       [--threads 1] [--malloc-mmap-threshold BYTES]
                                       [--manifest resources/demo/train/manifest.tsv] [--out JSON]

For each scale S a corpus directory is built in a temporary folder: the demo's training wavs, symlinked S times
under rep000/ ... rep{S-1}/ (ids are relative paths, so they stay unique; the manifest stage follows the links and
reads each header for real). Every stage then runs as its own process with the entry point and flags the workflow's
rule uses (workflow/rules/data.smk, units.smk), so what is measured is what the DAG runs:

  manifest        python -m data.manifest ROOT OUT --config '{"speaker": "prefix"}' --threads 4   (header check)
  extract/E       python -m units.extract units --shard I --num-shards N ..., one process per shard, one at a time
                  (E = mfcc: MFCC k-means 256, fitted once on the 1x corpus; spidr-small: codebook argmax at layer 6
                  of a randomly initialised SpidR small; speed and memory do not depend on trained weights)
  gather/E        python -m units.gather SHARD_0 ... --out frames.parquet
  dedup/E         python -m units.dedup frames.parquet dedup.parquet --stats STATS
  pack/E          python -m lm.pack --units dedup.parquet --out DIR --config '{}'  (if lm/pack.py exists; otherwise
                  lm.data.prepare_token_arrays through `python -c`; the JSON says which)

Each stage's peak RSS is the child's own ru_maxrss (os.wait4), the maximum over shards for extraction; its
throughput is files / s (manifest), x real time (extraction: audio seconds per second of the shard processes' summed
wall time, process start and model load included), frames / s (gather, dedup) or tokens / s (pack). Memory should
not grow with the corpus: the target is a peak RSS at the largest scale at most 10% above the smallest's.
`rss_above_import_mb` is a stage's peak minus that of a process that only imports its module (torch alone is most
of the extraction, gather and pack figures), i.e. what the stage's data and model add.

`--shard-hours` (the extraction's resumable pieces, which it holds in memory: the current one and the next one being
read) is lowered from the workflow's 0.5 h so that even at 1x every shard has several pieces; otherwise a 1x corpus
smaller than one piece would be measured against full pieces at 20x. At the smallest scale each encoder is also run
unsharded (--num-shards 1), and the gathered units must equal that file's rows (sha256 of ids and units).
Dedup reads 1,024 rows per record batch, packing 8,192, more than the 400 utterances of the 1x demo: their growth
from 1x includes filling the first batch. The machine is usually shared: the 1-minute load average is recorded per
stage, and CPU time beside wall time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from common.io import atomic_write_json, code_version
from data.audio import SAMPLE_RATE
from data.manifest import read_manifest

REPO = Path(__file__).resolve().parent.parent
RSS_GROWTH_TARGET = 1.10  # peak RSS at the largest scale / at the smallest
ENCODERS = ("mfcc", "spidr-small")
SPIDR_LAYER = 6  # the demo's unit layer (small preset: codebook heads on layers 3..8)
KMEANS_K = 256
# The module each stage runs: its import alone (torch for units.extract and lm.pack) sets a floor under its RSS.
STAGE_MODULES = {"manifest": "data.manifest", "extract": "units.extract", "gather": "units.gather",
                 "dedup": "units.dedup", "pack": "lm.pack"}


def run_stage(cmd: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run one stage process; its wall and CPU time, and its own peak RSS (ru_maxrss of wait4, not the max over
    every child this benchmark ever had, which is what getrusage(RUSAGE_CHILDREN) would give)."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait for it again
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"stage failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return {"wall_s": round(wall, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "load_1m": round(load, 2)}


def with_throughput(stats: dict[str, Any], items: float, unit: str, what: str) -> dict[str, Any]:
    return {**stats, "n": round(items, 1), "n_unit": what, "throughput": round(items / stats["wall_s"], 1),
            "throughput_unit": unit}


def build_corpus(manifest: Path, root: Path, scale: int) -> None:
    """ROOT/repNNN/<wav name> -> the demo's wav, NNN = 0..scale-1."""
    for path in read_manifest(manifest)["path"]:
        for r in range(scale):
            link = root / f"rep{r:03d}" / Path(path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)


def units_digest(path: Path) -> str:
    """sha256 of the ids, lengths and units of a units file in row order, independent of its row groups."""
    ids, lengths, values = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    for batch in pq.ParquetFile(path).iter_batches(columns=["id", "units"]):
        ids.update("\0".join(batch.column("id").to_pylist()).encode() + b"\0")
        column = batch.column("units")
        offsets = column.offsets.to_numpy().astype(np.int64)
        lengths.update(np.diff(offsets).tobytes())
        values.update(column.values.slice(offsets[0], offsets[-1] - offsets[0]).to_numpy().astype(np.int32)
                      .tobytes())
    return hashlib.sha256(ids.digest() + lengths.digest() + values.digest()).hexdigest()


def pack_command(units: Path, out: Path) -> tuple[list[str], str]:
    """The LM packing job: `python -m lm.pack` when this checkout has it, else prepare_token_arrays directly."""
    if importlib.util.find_spec("lm.pack") is not None:
        return [sys.executable, "-m", "lm.pack", "--units", str(units), "--out", str(out), "--config", "{}"], \
            "python -m lm.pack"
    code = ("import sys; from lm.config import TrainConfig; from lm.data import prepare_token_arrays; "
            "c = TrainConfig.from_dict({}); "
            "prepare_token_arrays(sys.argv[1], sys.argv[2], valid_fraction=c.valid_fraction, seed=c.seed)")
    return [sys.executable, "-c", code, str(units), str(out)], "python -c lm.data.prepare_token_arrays"


class Bench:
    """The stages of one run, sharing the temporary folder, the stage environment and the flags."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        threads = str(args.threads)
        self.env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        if args.malloc_mmap_threshold:
            # A fixed threshold turns off glibc's dynamic one, under which CPU inference over ever new tensor shapes
            # leaves the heap fragmented (RSS grows with the pieces a process has encoded).
            self.env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.configs: dict[str, dict[str, Any]] = {}
        self.kmeans: Path | None = None
        self.setup: dict[str, Any] = {}
        self.import_rss: dict[str, float] = {}

    def stage(self, name: str, scale: int, cmd: list[str]) -> dict[str, Any]:
        log = self.logs / f"{name.replace('/', '_')}-{scale}x.log"
        stats = run_stage(cmd, self.env, log)
        floor = self.import_rss.get(STAGE_MODULES.get(name.split("/")[0], ""))
        if floor is not None:
            stats["rss_above_import_mb"] = round(stats["peak_rss_mb"] - floor, 1)
        return stats

    def measure_imports(self) -> dict[str, float]:
        """Peak RSS of a process that only imports each stage's module: what no corpus size changes."""
        modules = {m for m in STAGE_MODULES.values() if importlib.util.find_spec(m) is not None}
        for module in sorted(modules):
            cmd = [sys.executable, "-c", f"import {module}"]
            self.import_rss[module] = run_stage(cmd, self.env, self.logs / f"import-{module}.log")["peak_rss_mb"]
        return self.import_rss

    def prepare_encoders(self, manifest: Path) -> dict[str, Any]:
        """Units configs of both encoders; the SpidR-small checkpoint (random) and the MFCC k-means (fitted on
        `manifest`, a small sample: the fit is not what is measured)."""
        ckpt = self.tmp / "spidr-small.pt"
        code = ("import sys; from spidr.checkpoint import save_model; from spidr.model import build_model; "
                "save_model(build_model('small', seed=0), sys.argv[1])")
        subprocess.run([sys.executable, "-c", code, str(ckpt)], cwd=REPO, env=self.env, check=True)
        self.configs["spidr-small"] = {"encoder": {"kind": "spidr", "checkpoint": str(ckpt)}, "layer": SPIDR_LAYER,
                                       "quantizer": "codebook"}
        mfcc = {"encoder": {"kind": "mfcc"}, "layer": 0, "quantizer": "kmeans", "k": KMEANS_K,
                "fit": {"seed": 0, "max_frames": 20_000, "niter": 10}}
        self.configs["mfcc"] = mfcc
        self.kmeans = self.tmp / "mfcc-kmeans.npz"
        fit = self.stage("fit_kmeans/mfcc", 1, [
            sys.executable, "-m", "units.kmeans", "fit", "--config", json.dumps(mfcc, sort_keys=True),
            "--manifest", str(manifest), "--out", str(self.kmeans), "--no-progress"])
        return {"fit_kmeans_mfcc": fit}

    def extract(self, encoder: str, scale: int, manifest: Path, out_dir: Path,
                num_shards: int) -> tuple[list[Path], list[dict]]:
        """One process per shard, one after the other (each one's RSS and time are its own)."""
        cfg = json.dumps(self.configs[encoder], sort_keys=True)
        kmeans = ["--kmeans", str(self.kmeans)] if self.configs[encoder]["quantizer"] == "kmeans" else []
        paths, runs = [], []
        for i in range(num_shards):
            out = out_dir / f"{i}-of-{num_shards}.parquet"
            cmd = [sys.executable, "-m", "units.extract", "units", "--config", cfg, *kmeans, "--manifest",
                   str(manifest), "--shard", str(i), "--num-shards", str(num_shards), "--out", str(out),
                   "--no-progress", "--shard-hours", str(self.args.shard_hours)]
            runs.append(self.stage(f"extract/{encoder}-shard{i}of{num_shards}", scale, cmd))
            paths.append(out)
        return paths, runs

    def scale(self, scale: int, encoders: list[str], check_equal: bool) -> tuple[dict[str, Any], list[dict]]:
        """Every stage at one scale; the equality checks of sharded vs unsharded units if asked."""
        root, work = self.tmp / f"corpus-{scale}x", self.tmp / f"work-{scale}x"
        build_corpus(self.args.manifest, root, scale)
        manifest = work / "manifest.tsv"
        stages: dict[str, Any] = {}
        stats = self.stage("manifest", scale, [
            sys.executable, "-m", "data.manifest", str(root), str(manifest), "--config",
            json.dumps({"speaker": "prefix"}), "--threads", "4"])
        table = read_manifest(manifest)
        seconds = float(table["num_samples"].sum()) / SAMPLE_RATE
        stages["manifest"] = with_throughput(stats, len(table), "files/s", "files")
        if self.kmeans is None:
            self.setup = self.prepare_encoders(manifest)
        equal = []
        for encoder in encoders:
            units_dir = work / encoder
            shards, runs = self.extract(encoder, scale, manifest, units_dir / "shards", self.args.shards)
            total = {"wall_s": round(sum(r["wall_s"] for r in runs), 3),
                     "cpu_s": round(sum(r["cpu_s"] for r in runs), 3),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                     "rss_above_import_mb": max(r["rss_above_import_mb"] for r in runs),
                     "load_1m": max(r["load_1m"] for r in runs)}
            stages[f"extract/{encoder}"] = {**with_throughput(total, seconds, "x real time", "audio seconds"),
                                            "shards": runs}
            frames_path = units_dir / "frames.parquet"
            stats = self.stage(f"gather/{encoder}", scale, [
                sys.executable, "-m", "units.gather", *map(str, shards), "--out", str(frames_path)])
            dedup_stats = units_dir / "dedup_stats.json"
            stats_d = self.stage(f"dedup/{encoder}", scale, [
                sys.executable, "-m", "units.dedup", str(frames_path), str(units_dir / "dedup.parquet"),
                "--stats", str(dedup_stats)])
            n_frames = json.loads(dedup_stats.read_text())["frames"]
            stages[f"gather/{encoder}"] = with_throughput(stats, n_frames, "frames/s", "frames")
            stages[f"dedup/{encoder}"] = with_throughput(stats_d, n_frames, "frames/s", "frames")
            cmd, how = pack_command(units_dir / "dedup.parquet", units_dir / "lm-data")
            stats = self.stage(f"pack/{encoder}", scale, cmd)
            meta = json.loads((units_dir / "lm-data" / "meta.json").read_text())
            tokens = sum(split["tokens"] for split in meta["stats"].values())
            stages[f"pack/{encoder}"] = {**with_throughput(stats, tokens, "tokens/s", "tokens"), "entry_point": how}
            if check_equal:
                (single,), (run,) = self.extract(encoder, scale, manifest, units_dir / "unsharded", 1)
                sharded, unsharded = units_digest(frames_path), units_digest(single)
                equal.append({"encoder": encoder, "scale": scale, "shards": self.args.shards,
                              "sharded_sha256": sharded, "unsharded_sha256": unsharded, "equal": sharded == unsharded,
                              "unsharded_run": with_throughput(run, seconds, "x real time", "audio seconds")})
        return {"audio_hours": round(seconds / 3600, 3), "files": len(table), "stages": stages}, equal


def rss_growth(per_scale: dict[str, Any], small: int, large: int) -> dict[str, Any]:
    """Peak RSS at the largest scale / at the smallest, per stage that ran at both."""
    a, b = per_scale[str(small)]["stages"], per_scale[str(large)]["stages"]
    out = {}
    for name in a:
        if name in b and "peak_rss_mb" in a[name]:
            ratio = b[name]["peak_rss_mb"] / a[name]["peak_rss_mb"]
            out[name] = {"ratio": round(ratio, 3), "pass": ratio <= RSS_GROWTH_TARGET,
                         "growth_mb": round(b[name]["peak_rss_mb"] - a[name]["peak_rss_mb"], 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 20], help="corpus sizes, in demos")
    parser.add_argument("--shards", type=int, default=4, help="extraction jobs per dataset")
    parser.add_argument("--spidr-scales", type=int, nargs="*", default=None,
                        help="scales SpidR-small runs at (default: all of --scales; none: MFCC only)")
    parser.add_argument("--shard-hours", type=float, default=0.04, help="extraction's resumable pieces (see above)")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                        help="torch / OpenMP threads of every stage process")
    parser.add_argument("--malloc-mmap-threshold", type=int,
                        help="glibc's MALLOC_MMAP_THRESHOLD_ for every stage (bytes; default: glibc's dynamic one)")
    parser.add_argument("--manifest", type=Path, default=REPO / "resources/demo/train/manifest.tsv",
                        help="the 1x corpus (the demo's training set)")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if not args.manifest.is_file():
        raise SystemExit(f"{args.manifest}: no demo manifest (make demo-data, or python -m data.demo)")
    scales = sorted(set(args.scales))
    spidr = scales if args.spidr_scales is None else sorted(set(args.spidr_scales) & set(scales))
    ran = {"mfcc": scales, "spidr-small": spidr}
    load_start = os.getloadavg()
    per_scale, equal = {}, []
    with tempfile.TemporaryDirectory(prefix="bench_scale-") as tmp:
        bench = Bench(args, Path(tmp))
        bench.measure_imports()
        for scale in scales:
            encoders = [e for e in ENCODERS if scale in ran[e]]
            per_scale[str(scale)], checks = bench.scale(scale, encoders, check_equal=scale == scales[0])
            equal += checks
    growth = rss_growth(per_scale, scales[0], scales[-1]) if len(scales) > 1 else {}
    import torch

    result = {
        "machine": {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                    "stage_threads": args.threads, "torch": torch.__version__,
                    "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                    "load_avg_start": [round(x, 2) for x in load_start],
                    "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
        "code_version": code_version(),
        "settings": {"scales": scales, "shards": args.shards, "shard_hours": args.shard_hours,
                     "malloc_mmap_threshold": args.malloc_mmap_threshold or os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                     "encoders_ran_at_scales": ran, "kmeans_k": KMEANS_K, "spidr_layer": SPIDR_LAYER,
                     "corpus": str(args.manifest)},
        "setup_not_scaled": {**bench.setup, "import_only_peak_rss_mb": bench.import_rss},
        "scales": per_scale,
        "rss_growth": {"target_max_ratio": RSS_GROWTH_TARGET, "from_scale": scales[0], "to_scale": scales[-1],
                       "stages": growth, "all_pass": all(g["pass"] for g in growth.values())},
        "sharded_equals_unsharded": {"checks": equal, "all_equal": all(c["equal"] for c in equal)},
    }
    text = json.dumps(result, indent=1)
    if args.out:
        atomic_write_json(args.out, result)
    print(text)


if __name__ == "__main__":
    main()
