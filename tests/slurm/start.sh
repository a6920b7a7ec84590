#!/usr/bin/env bash
# Start a one-node Slurm cluster on this host (munged, slurmctld, slurmd) and
# wait until its node is idle. Run as root; running it again is harmless.
#   SLURM_TEST_DIR   state, spool and logs (default /tmp/espnet_lowrank_slurm)
#   SLURM_CONF       where slurm.conf goes (default /etc/slurm/slurm.conf, which
#                    every Slurm command reads without further set-up)
set -euo pipefail
STATE=${SLURM_TEST_DIR:-/tmp/espnet_lowrank_slurm}
CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
export SLURM_CONF=${CONF}
WAIT_S=${SLURM_START_TIMEOUT:-60}

die() { echo "$0: $*" >&2; exit 1; }
for cmd in munged slurmctld slurmd sinfo scontrol; do
    command -v "$cmd" >/dev/null || die "$cmd not found (run: bash setup.sh --with-slurm)"
done
[ "$(id -u)" -eq 0 ] || die "needs root (SlurmUser=root, munged key)"

node_idle() { sinfo -h -N -o '%T' 2>/dev/null | grep -qx 'idle'; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if node_idle; then echo "slurm: node already idle"; exit 0; fi

mkdir -p "${STATE}"/{state,spool,log,run} "$(dirname "${CONF}")"
node=$(hostname -s)
cpus=$(nproc)
# Slurm drains a node that reports less memory than configured: leave 5 % out.
mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.95}' /proc/meminfo)
conf_text="# written by tests/slurm/start.sh: one node, no cgroups, no accounting
ClusterName=espnet-lowrank-test
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=${STATE}/state
SlurmdSpoolDir=${STATE}/spool
SlurmctldPidFile=${STATE}/run/slurmctld.pid
SlurmdPidFile=${STATE}/run/slurmd.pid
SlurmctldLogFile=${STATE}/log/slurmctld.log
SlurmdLogFile=${STATE}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((mem_mb / cpus))
# Finished jobs stay visible to scontrol for 10 minutes (their state is read there).
MinJobAge=600
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP
"
if [ ! -f "${CONF}" ] || [ "$(cat "${CONF}")" != "${conf_text%$'\n'}" ]; then
    printf '%s' "${conf_text}" > "${CONF}"
fi

# munge: a key, then the daemon (as the munge user, as its package intends).
if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 600 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    runuser -u munge -- munged
fi

alive "${STATE}/run/slurmctld.pid" || slurmctld
alive "${STATE}/run/slurmd.pid" || slurmd

for _ in $(seq 1 "${WAIT_S}"); do
    if node_idle; then echo "slurm: node ${node} idle (${cpus} CPUs, ${mem_mb} MB)"; exit 0; fi
    sleep 1
done
sinfo -N -l >&2 || true
tail -5 "${STATE}/log/slurmctld.log" "${STATE}/log/slurmd.log" >&2 || true
die "node ${node} not idle after ${WAIT_S} s"
