#!/usr/bin/env bash
# Check a merged sLM21 submission (eval.submission) with the official ZeroSpeech toolkit, offline: its validation
# and, with --score, its scoring next to ours. Prints one JSON object; exits non-zero when zrc finds an error.
# Usage: scripts/zrc_validate.sh SUBMISSION_DIR SLM21_ROOT [--sets dev test] [--score] [--ours METRICS.json ...]
#   SLM21_ROOT: the benchmark's {lexical,syntactic}/{dev,test}/ folders (wavs + gold.csv), e.g. resources/demo/sLM21
# Creates .venv-zrc once (scripts/setup_zrc_venv.sh); ZRC_VENV points elsewhere.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${ZRC_VENV:-$(dirname "$here")/.venv-zrc}"
if [[ ! -f "$venv/.installed" ]]; then
    "$here/setup_zrc_venv.sh" "$venv" >&2
fi
exec "$venv/bin/python" "$here/zrc_official.py" "$@"
