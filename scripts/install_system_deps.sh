#!/usr/bin/env bash
# Install the Debian packages the pipeline needs, only when missing: flite (demo corpus TTS).
# With --slurm, also what the SLURM end-to-end test starts as a single-node cluster (scripts/slurm/local_cluster.sh).
set -euo pipefail
wanted=(flite)
if [[ "${1:-}" == "--slurm" ]]; then
    wanted+=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
fi
missing=()
for pkg in "${wanted[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    SUDO=""
    [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    echo "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
