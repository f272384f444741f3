#!/usr/bin/env bash
# Create (or refresh) the project's Python 3.12 virtual environment with the pinned dependency set.
# Idempotent: re-running only installs what constraints.txt or pyproject.toml changed. No root, no system packages.
#
#   scripts/setup_venv.sh [VENV] [--gpu|--cpu]
#
# faiss comes in one variant at a time (both install the `faiss` package): --cpu (faiss-cpu, the default for a new
# venv) or --gpu (faiss-gpu-cu12, for CUDA machines: fit_kmeans then runs on the job's GPU). The other one is
# uninstalled first; without a flag, a venv keeps the variant it has.
set -euo pipefail
VENV=.venv
FAISS=""
for arg in "$@"; do
    case "$arg" in
        --gpu) FAISS=gpu ;;
        --cpu) FAISS=cpu ;;
        -*) echo "error: unknown option $arg (usage: $0 [VENV] [--gpu|--cpu])" >&2; exit 2 ;;
        *) VENV="$arg" ;;
    esac
done

works() { [[ -n "$1" && -x "$1" ]] && "$1" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; }

# pyenv's shim for python3.12 exists even when 3.12 is not the active version, so every candidate is run.
find_python312() {
    local candidates=("$(command -v python3.12 || true)")
    if command -v pyenv >/dev/null 2>&1; then
        local v
        for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.12(\.|$)' | sort -V -r); do
            candidates+=("$(pyenv root)/versions/$v/bin/python3.12")
        done
    fi
    candidates+=("$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12)
    local p
    for p in "${candidates[@]}"; do
        if works "$p"; then echo "$p"; return 0; fi
    done
    return 1
}

if [[ ! -x "$VENV/bin/python" ]]; then
    PY="$(find_python312)" || { echo "error: Python 3.12 not found (install it, e.g. 'pyenv install 3.12')" >&2; exit 1; }
    echo "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] >= (3, 12), sys.version' \
    || { echo "error: $VENV is not a Python >= 3.12 environment; delete it and rerun" >&2; exit 1; }
"$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24"
installed() { "$VENV/bin/python" -m pip show --quiet "$1" >/dev/null 2>&1; }
if [[ -z "$FAISS" ]]; then
    if installed faiss-gpu-cu12; then FAISS=gpu; else FAISS=cpu; fi
fi
other=faiss-gpu-cu12
[[ "$FAISS" == gpu ]] && other=faiss-cpu
if installed "$other"; then
    # both variants write the same faiss package: remove both, then install the one asked for whole
    echo "faiss: switching from $other to the $FAISS variant"
    "$VENV/bin/python" -m pip uninstall --quiet -y faiss-cpu faiss-gpu-cu12
fi
# constraints.txt pins every package (the lock file); the project is installed editable on top.
"$VENV/bin/python" -m pip install --quiet -c constraints.txt -e ".[dev,$FAISS]"
# pip leaves packages it was not asked about alone: check that nothing drifted from the lock.
"$VENV/bin/python" scripts/check_venv.py constraints.txt
