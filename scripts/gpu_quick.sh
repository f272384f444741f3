#!/usr/bin/env bash
# The GPU quick run (configs/gpu_quick.yaml) in one call, on a GPU machine without network.
#
#   scripts/gpu_quick.sh prepare [--have FREEZE.txt]   where there is network (Debian/Ubuntu x86_64, Python 3.12)
#   scripts/gpu_quick.sh run [SNAKEMAKE ARGS...]       on the GPU machine (Python 3.12 + torch 2.11 CUDA, offline)
#
# prepare fills .gpu_quick/ (git-ignored), which travels to the GPU machine with the checkout:
#   flite.tar.gz  flite's binary, its shared libraries (and libasound's) and the example texts data.demo reads
#                 (the Alice text is in the Debian package flite), from `apt-get download flite libflite1
#                 libasound2` unpacked with dpkg-deb -x: 14.3 MiB. The audio itself (~4 h at 16 kHz, ~450 MB) is
#                 generated on the GPU machine's CPU cores, never shipped.
#   wheels/       wheels of the project's Python dependencies without torch and what torch already brings
#                 (pip wheel, cp312 manylinux). All of them come to 264 MiB, too much for a 64 MiB transfer: give
#                 --have the output of `python3 -m pip list --format=freeze` on the GPU machine and only the
#                 missing ones are kept. Sizes are printed.
# run uses the system flite when there is one, else unpacks flite.tar.gz; installs missing packages from wheels/
# into a venv that sees the system's torch (--system-site-packages), offline; then runs the whole DAG
# (corpus generation included) and prints the timings, the table and where the learning curves are.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BUNDLE=$REPO/.gpu_quick
# What the GPU machine's torch brings (never shipped) and the project's torch itself.
TORCH_DEPS='^(torch|torchaudio|triton|nvidia[-_].*|cuda[-_].*|sympy|mpmath|networkx|jinja2|markupsafe|filelock|fsspec|typing[-_]extensions|setuptools)$'
IMPORTS=(snakemake yaml numpy pandas scipy pyarrow soundfile faiss fastabx tqdm matplotlib jsonschema tabulate
         transformers accelerate torchaudio)

usage() { sed -n '2,5p' "$0" >&2; exit 2; }

prepare() {
    local have=""
    while (($#)); do
        case $1 in
            --have) have=$2; shift 2 ;;
            *) usage ;;
        esac
    done
    mkdir -p "$BUNDLE"
    tmp=$(mktemp -d)  # global: the EXIT trap runs after this function has returned
    trap 'rm -rf "$tmp"' EXIT
    # flite, its libraries and its example texts.
    (cd "$tmp" && apt-get download flite libflite1 libasound2 >/dev/null 2>&1 ||
        apt-get download flite libflite1 libasound2t64 >/dev/null)  # libasound2t64: Ubuntu 24.04
    mkdir -p "$tmp/root"
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$tmp/root"; done
    (cd "$tmp/root" && tar -czf "$BUNDLE/flite.tar.gz" usr/bin/flite usr/lib/*/libflite*.so* usr/lib/*/libasound.so* \
        usr/share/doc/flite/examples)
    local python=${PYTHON:-$REPO/.venv/bin/python}
    # The runtime closure of the project's dependencies at the versions installed here (make setup: the lock),
    # without torch and what torch brings; pip wheel --no-deps takes each wheel or builds it (pure-Python sdists).
    "$python" - "$TORCH_DEPS" "$have" >"$tmp/pinned.txt" <<'EOF'
import re, sys, tomllib
from importlib import metadata
from packaging.requirements import Requirement
torch_deps, have = re.compile(sys.argv[1]), sys.argv[2]
norm = lambda s: re.sub(r"[-_.]+", "-", s).lower()
installed = {norm(re.split(r"[=@ ]", ln, maxsplit=1)[0]) for ln in open(have)} if have else set()
todo = [Requirement(d) for d in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]]
seen = {}
while todo:
    req = todo.pop()
    name = norm(req.name)
    if name in seen or (torch_deps.match(name) and name != "torchaudio"):
        continue
    seen[name] = metadata.version(req.name)
    if name == "torchaudio":
        continue  # its dependency is torch, which the GPU machine has
    for dep in map(Requirement, metadata.requires(req.name) or []):
        if dep.marker is None or dep.marker.evaluate({"extra": ""}):
            todo.append(dep)
print("".join(f"{n}=={v}\n" for n, v in sorted(seen.items()) if n not in installed), end="")
EOF
    rm -rf "$BUNDLE/wheels"
    "$python" -m pip wheel -q --no-deps -r "$tmp/pinned.txt" -w "$BUNDLE/wheels"
    echo "brought to the GPU machine (.gpu_quick/):"
    du -b "$BUNDLE/flite.tar.gz" | awk '{printf "  %8.1f MiB  flite.tar.gz\n", $1 / 1048576}'
    (cd "$BUNDLE/wheels" && du -b -- *.whl | sort -rn | awk '{printf "  %8.1f MiB  wheels/%s\n", $1 / 1048576, $2}')
    du -sb "$BUNDLE" | awk '{printf "  %8.1f MiB  in all\n", $1 / 1048576}'
}

run() {
    export TEXTLESS_FLITE_EXAMPLES=/usr/share/doc/flite/examples
    if ! command -v flite >/dev/null || [[ ! -f $TEXTLESS_FLITE_EXAMPLES/alice ]]; then
        [[ -f $BUNDLE/flite.tar.gz ]] || { echo "no flite here and no $BUNDLE/flite.tar.gz: run prepare" >&2; exit 1; }
        mkdir -p "$BUNDLE/flite"
        tar -xzf "$BUNDLE/flite.tar.gz" -C "$BUNDLE/flite"
        export PATH="$BUNDLE/flite/usr/bin:$PATH"
        export LD_LIBRARY_PATH="$(echo "$BUNDLE"/flite/usr/lib/*-linux-gnu)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export TEXTLESS_FLITE_EXAMPLES=$BUNDLE/flite/usr/share/doc/flite/examples
    fi
    flite -voice kal16 -t "ready" none >/dev/null
    local python=python3
    [[ -x $REPO/.venv/bin/python ]] && python=$REPO/.venv/bin/python
    if ! "$python" -c "import $(IFS=,; echo "${IMPORTS[*]}")" 2>/dev/null; then
        [[ -d $BUNDLE/wheels ]] || { echo "missing Python packages and no $BUNDLE/wheels: run prepare" >&2; exit 1; }
        # A venv that sees the system's torch; only what is missing is installed, offline.
        python3 -m venv --system-site-packages "$BUNDLE/venv"
        python="$BUNDLE/venv/bin/python"
        "$python" -m pip install -q --no-index --find-links "$BUNDLE/wheels" "$BUNDLE"/wheels/*.whl
        "$python" -c "import $(IFS=,; echo "${IMPORTS[*]}")"
    fi
    export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
    "$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name())"
    local start=$SECONDS
    # gpu=4: the small jobs after pretraining (extraction, k-means, three LMs, scoring) share the one GPU.
    "$python" -m snakemake --cores "$(nproc)" --resources gpu=4 --configfile configs/gpu_quick.yaml \
        --replace-workflow-config --rerun-incomplete --printshellcmds "$@" all
    echo "whole DAG: $((SECONDS - start)) s"
    cat results/report/table.md
    echo "learning curves: results/report/learning_curves.png (points: results/report/learning_curves.csv)"
    grep '"split": "curves"' work/pretrain/spidr_medium/metrics.jsonl | tail -1
}

case ${1:-} in
    prepare) shift; prepare "$@" ;;
    run) shift; run "$@" ;;
    *) usage ;;
esac
