#!/usr/bin/env bash
# Install the Debian packages for the one-node test cluster (slurm-wlm, munge).
# Called by `setup.sh --with-slurm`; returns at once when they are installed.
set -euo pipefail
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sinfo >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "$0: installing slurm-wlm and munge needs root (apt-get)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends slurm-wlm munge
