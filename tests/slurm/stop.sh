#!/usr/bin/env bash
# Stop what tests/slurm/start.sh started: slurmd, slurmctld, munged.
set -uo pipefail
STATE=${SLURM_TEST_DIR:-/tmp/espnet_lowrank_slurm}

stop() {  # pid file, name
    [ -f "$1" ] || return 0
    local pid; pid=$(cat "$1")
    if kill "${pid}" 2>/dev/null; then
        for _ in $(seq 1 50); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.2; done
        kill -9 "${pid}" 2>/dev/null || true
    fi
    rm -f "$1"
    echo "slurm: stopped $2"
}
stop "${STATE}/run/slurmd.pid" slurmd
stop "${STATE}/run/slurmctld.pid" slurmctld
stop /run/munge/munged.pid munged
exit 0
