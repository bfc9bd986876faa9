#!/usr/bin/env bash
# Start a one-node Slurm (munge, slurmctld, slurmd) on this machine for the `bench submit`
# tests, installing Debian's packages if they are missing; `.ci/slurm.sh stop` stops it.
# Idempotent: a node that is already up is left as it is. Prints nothing on success; exits 1
# with the daemons' log lines on stderr if the node does not come up idle.
# Needs root (it writes /etc/slurm/slurm.conf, unless one that it did not write is there).
set -euo pipefail
STATE=${BENCH_SLURM_STATE:-/var/lib/bench-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by tkp-bench .ci/slurm.sh"

stop() {
  for pid in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" /run/munge/munged.pid; do
    [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null || true
  done
  sleep 1
}

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null && return
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown -R munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
  chmod 0755 /run/munge
  chmod 0400 /etc/munge/munge.key
  runuser -u munge -- munged
}

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then return; fi  # a real cluster's: keep it
  mkdir -p "$STATE/state" "$STATE/spool" /etc/slurm
  local node
  node=$(slurmd -C | head -1)  # NodeName=<hostname> CPUs=... RealMemory=...
  # two GPUs as a generic resource on stand-in device files (character devices like /dev/null):
  # `bench submit --gpus-per-worker 2` is scheduled as on a GPU node; its ranks find no CUDA, use gloo
  for i in 0 1; do
    [ -c "$STATE/fake-gpu$i" ] || { rm -f "$STATE/fake-gpu$i"; mknod "$STATE/fake-gpu$i" c 1 3; }
  done
  cat >"$(dirname "$CONF")/gres.conf" <<EOF
$MARK
NodeName=$(hostname) Name=gpu File=$STATE/fake-gpu[0-1]
EOF
  cat >"$CONF" <<EOF
$MARK
ClusterName=bench
SlurmctldHost=$(hostname)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
KillWait=10
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
$node Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() {  # a pid file whose process runs (not a zombie)
  [ -f "$1" ] && case "$(ps -o stat= -p "$(cat "$1")" 2>/dev/null)" in "" | Z*) false ;; *) true ;; esac
}

node_state() { sinfo -h -N -n "$(hostname)" -o %T 2>/dev/null | head -1; }

wait_idle() {
  for i in $(seq 60); do
    case "$(node_state)" in
      idle | mixed | allocated | completing) return 0 ;;
      drained | drain* | inval) [ "$i" -gt 3 ] && { scontrol update nodename="$(hostname)" state=resume 2>/dev/null || true; } ;;
    esac  # (drained: by an earlier configuration kept in the state folder)
    sleep 1
  done
  echo "slurm: node $(hostname) is '$(node_state)', not idle after 60 s" >&2
  tail -n 5 "$STATE"/slurmctld.log "$STATE"/slurmd.log >&2 2>/dev/null || true
  return 1
}

start() {
  install
  start_munge
  write_conf
  alive "$STATE/slurmctld.pid" || slurmctld
  alive "$STATE/slurmd.pid" || slurmd
  wait_idle
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
