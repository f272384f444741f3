#!/usr/bin/env bash
# Debian packages, each optional and only for what names it; a run of the pipeline on your data (a cluster included)
# needs none of them, and `make setup` / scripts/setup_venv.sh need no root.
#
#   scripts/install_system_deps.sh [--demo] [--slurm]
#
#   --demo   flite: the TTS that generates the demo corpus (`make demo`, and the tests that build it); the default
#   --slurm  slurmctld, slurmd, slurmdbd, munge, MariaDB: the local two-node test cluster (scripts/slurm/local_cluster.sh)
#
# Installs only what is missing, with apt-get (as root, or through sudo). Elsewhere (RHEL, no sudo) it names the
# packages to ask for and exits 1; nothing else in the project depends on them.
set -euo pipefail
wanted=()
for arg in "${@:---demo}"; do
    case "$arg" in
        --demo) wanted+=(flite) ;;
        --slurm) wanted+=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server) ;;
        *) echo "usage: $0 [--demo] [--slurm]" >&2; exit 2 ;;
    esac
done
if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "error: not a Debian/Ubuntu system: install ${wanted[*]} with your package manager (only the demo corpus" \
         "and the local SLURM test cluster need them)" >&2
    exit 1
fi
missing=()
for pkg in "${wanted[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
((${#missing[@]})) || exit 0
SUDO=""
if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1 || ! sudo -n true 2>/dev/null; then
        echo "error: Debian packages ${missing[*]} are missing and this needs root: ask an administrator to" \
             "\`apt-get install ${missing[*]}\` (only the demo corpus and the local SLURM test cluster need them)" >&2
        exit 1
    fi
    SUDO="sudo"
fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
