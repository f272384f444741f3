#!/usr/bin/env bash
# Install the Debian packages the pipeline needs, only when missing: flite (demo corpus TTS).
# With --slurm, also the single-node SLURM cluster used by the SLURM end-to-end test.
set -euo pipefail
pkgs=()
command -v flite >/dev/null 2>&1 || pkgs+=(flite)
if [[ "${1:-}" == "--slurm" ]]; then
    for bin in slurmctld slurmd munged sacct slurmdbd mariadbd; do
        case "$bin" in
            slurmctld) command -v slurmctld >/dev/null 2>&1 || pkgs+=(slurmctld) ;;
            slurmd) command -v slurmd >/dev/null 2>&1 || pkgs+=(slurmd) ;;
            munged) command -v munged >/dev/null 2>&1 || pkgs+=(munge) ;;
            sacct) command -v sacct >/dev/null 2>&1 || pkgs+=(slurm-client) ;;
            slurmdbd) command -v slurmdbd >/dev/null 2>&1 || pkgs+=(slurmdbd) ;;
            mariadbd) command -v mariadbd >/dev/null 2>&1 || pkgs+=(mariadb-server) ;;
        esac
    done
fi
if ((${#pkgs[@]})); then
    SUDO=""
    [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    echo "installing Debian packages: ${pkgs[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
