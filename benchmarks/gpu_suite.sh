#!/usr/bin/env bash
# The GPU measurements of the project in one go, each part under its own time limit, JSON under OUT_DIR.
#
#   benchmarks/gpu_suite.sh OUT_DIR [TOTAL_SECONDS]
#
# Parts, most important first (a part that fails or times out is recorded and the next one runs):
#   1. spidr_base.json     bench_spidr at the paper config (base, 237.5 s of audio per step, bf16):
#                          ours vs our code with the official code's settings, training audio-s/s, MFU, extraction x real time
#   2. extract.json        bench_extract: batched vs one-at-a-time unit extraction (SpidR, HF tiny, MFCC)
#   3. train_smoke.log     python -m spidr.train, base, on generated noise: 30 steps, killed at 20 and resumed
#   4. spidr_compile.json  bench_spidr training with torch.compile (ours only)
#   5. lm.json             bench_lm: opt-125m / llama-125m, ours vs the HF Trainer
# On one H100: parts 1-3 took about 60, 28 and 43 s; part 4 about 120 s; part 5
# over 100 s (opt-125m alone: 381k tokens/s ours vs 301k for the HF Trainer).
# TOTAL_SECONDS (default 720) is a deadline for the whole suite: later parts get what is left.
# PRESET (default base), SMOKE_BATCH_SAMPLES (1600000) and LM_PRESETS (default: bench_lm's) shrink the suite
# to check its plumbing on a CPU.
set -uo pipefail
OUT=${1:?usage: gpu_suite.sh OUT_DIR [TOTAL_SECONDS]}
TOTAL=${2:-720}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PRESET=${PRESET:-base}
SMOKE=$(mktemp -d)  # generated audio and checkpoints: large, so not under OUT_DIR
trap 'rm -rf "$SMOKE"' EXIT
export OUT PRESET SMOKE
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"

# part NAME LIMIT COMMAND...: run under min(LIMIT, time left), log to OUT/NAME.log, note the outcome.
part() {
    local name=$1 limit=$2
    shift 2
    local left=$((TOTAL - ($(date +%s) - START)))
    ((left < limit)) && limit=$left
    if ((limit < 20)); then
        echo "$name: skipped (no time left)" | tee -a "$SUMMARY"
        return
    fi
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc after $(($(date +%s) - t0)) s (limit $limit s)" | tee -a "$SUMMARY"
    # the benchmarks end their output with one indented JSON object
    sed -n '/^{/,$p' "$OUT/$name.log" > "$OUT/$name.json"
    [[ -s $OUT/$name.json ]] || rm -f "$OUT/$name.json"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,power.limit --format=csv
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/device.txt" 2>&1

part spidr_base 150 python3 benchmarks/bench_spidr.py --preset $PRESET

part extract 90 python3 -m benchmarks.bench_extract --encoders spidr-$PRESET,hf-tiny,mfcc

train_smoke() {
    local dir=$SMOKE
    python3 - "$dir" <<'PY' || return 1
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

root = Path(sys.argv[1])
rng = np.random.default_rng(0)
rows = ["id\tpath\tnum_samples\tspeaker"]
for i in range(48):
    n = int(rng.uniform(4, 16) * 16_000)
    t = np.arange(n) / 16_000
    wav = 0.1 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(n)
    sf.write(root / f"u{i:03d}.wav", wav.astype(np.float32), 16_000, subtype="PCM_16")
    rows.append(f"u{i:03d}\tu{i:03d}.wav\t{n}\ts{i % 4}")
(root / "manifest.tsv").write_text("\n".join(rows) + "\n")
PY
    local cfg="{\"preset\": \"$PRESET\", \"max_steps\": 30, \"log_interval\": 5, \"checkpoint_interval\": 10,
                \"data\": {\"batch_samples\": ${SMOKE_BATCH_SAMPLES:-1600000}, \"num_workers\": 2}}"
    local run=(python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m spidr.train --manifest "$dir/manifest.tsv"
               --workdir "$dir/work" --out "$dir/final.pt" --config "$cfg")
    "${run[@]}" --stop-after 20 || return 1
    "${run[@]}" || return 1
    tail -n 3 "$dir/work/metrics.jsonl"
    test -f "$dir/final.pt"
}
export -f train_smoke
part train_smoke 90 bash -c train_smoke

part spidr_compile 240 python3 benchmarks/bench_spidr.py --preset $PRESET --compile --skip-official-settings --modes train

part lm 150 python3 benchmarks/bench_lm.py --steps 30 ${LM_PRESETS:+--presets $LM_PRESETS}

echo "total: $(($(date +%s) - START)) s" | tee -a "$SUMMARY"
