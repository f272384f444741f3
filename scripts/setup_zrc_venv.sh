#!/usr/bin/env bash
# Create .venv-zrc: the official ZeroSpeech toolkit (PyPI zerospeech-benchmarks 0.9.4) with the exact versions of
# scripts/zrc-requirements.txt, apart from the project's venv (it needs pandas 2 and pydantic 1; we run pandas 3).
# Usage: scripts/setup_zrc_venv.sh [VENV]   (default .venv-zrc; rerunning it rebuilds the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-zrc}"

# The interpreter of the project's venv (Python 3.12), else python3.12 from PATH.
if [[ -x .venv/bin/python ]]; then
    PY="$(.venv/bin/python -c 'import sys; print(sys._base_executable)')"
else
    PY="$(command -v python3.12)" || { echo "error: Python 3.12 not found (run 'make setup' first)" >&2; exit 1; }
fi
rm -rf "$VENV"
"$PY" -m venv "$VENV"
# pip 24.0 pinned: newer pips refuse the package, whose optional extras name git URLs ("Distributions from PyPI
# cannot declare direct URL dependencies"), although none of those extras is installed.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "pip==24.0"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/zrc-requirements.txt
"$VENV/bin/python" -m pip check
touch "$VENV/.installed"
echo "$VENV: zerospeech-benchmarks $("$VENV/bin/python" -c 'from importlib.metadata import version as v; print(v("zerospeech-benchmarks"))')"
