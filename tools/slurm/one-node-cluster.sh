#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for tests/test_slurm.py: Debian's slurm-wlm (slurmctld + slurmd)
# and munge, configured for this host's name, cores and memory, started as daemons (no systemd needed).
# Idempotent: a running cluster is left as it is. Needs root. `--stop` stops it.
#   sudo tools/slurm/one-node-cluster.sh          # install if missing, configure, start, wait until idle
set -euo pipefail

if [ "${1:-}" = "--stop" ]; then
  pkill -x slurmd || true
  pkill -x slurmctld || true
  pkill -x munged || true
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "tools/slurm/one-node-cluster.sh: needs root (it installs packages and starts daemons)" >&2
  exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  # 22.05 on Debian 12: slurmctld, slurmd, srun/sbatch/scancel/squeue, and munge for authentication.
  # Stale or missing package lists (a fresh image): update them once and try again.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null ||
    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; }
fi

if sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; then
  echo "slurm: already running ($(sinfo -h -o '%N %T %c CPUs'))"
  exit 0
fi

node=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
# Containers often have no usable cgroup hierarchy for Slurm: track processes by parent id and bind nothing.
# No accounting database: the stage reads a failed step's reason from srun's own messages.
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=srlm-test
SlurmctldHost=${node}
AuthType=auth/munge
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
KillWait=5
InactiveLimit=0
MinJobAge=30
NodeName=${node} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
echo "ConstrainCores=no" > /etc/slurm/cgroup.conf

chown munge:munge /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
pgrep -x slurmctld >/dev/null || /usr/sbin/slurmctld
pgrep -x slurmd >/dev/null || /usr/sbin/slurmd

for _ in $(seq 60); do
  if sinfo -h -o %T 2>/dev/null | grep -q -E '^(idle|mixed|allocated)'; then
    echo "slurm: one-node cluster up ($(sinfo -h -o '%N %T %c CPUs'))"
    exit 0
  fi
  sleep 1
done
echo "slurm: the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
