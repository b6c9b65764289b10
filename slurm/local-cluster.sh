#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for tests and for trying sweeps without a cluster.
#
#   slurm/local-cluster.sh start    install the Debian packages if missing, write the config, start the daemons
#   slurm/local-cluster.sh stop     stop exactly the daemons that `start` started (by their recorded PIDs)
#   slurm/local-cluster.sh status   say whether it runs (exit 0) or not (exit 1)
#   slurm/local-cluster.sh env      print `export SLURM_CONF=...` (eval it so sbatch/squeue find this cluster)
#
# Everything lives in $GFSA_SLURM_DIR (default /tmp/gfsa-slurm): slurm.conf, a private munge key and socket,
# daemon state, logs and PID files. Nothing under /etc is changed, and a munged or Slurm already running on
# the machine is left alone. Root is needed (apt-get, munged as user munge, slurmd). No systemd, no cgroups:
# proctrack/linuxproc and task/none. No accounting daemon: `gfsa sweep --status` reads squeue plus the exit
# files of its own sbatch script, and every test that waits on Slurm has a timeout.
#
# Nodes: one node named after this host, NodeAddr 127.0.0.1, max(nproc, 4) CPUs (config_overrides lets
# short test jobs share the cores), two partitions: `debug` (default; GraceTime=30 is what a preempted run
# has to checkpoint and requeue itself) and `urgent` (higher PriorityTier, preempts `debug` jobs with
# PreemptMode=REQUEUE, for preemption tests). sched_interval/bf_interval/cred_expire are lowered so that
# tests do not wait: a requeued job restarts after ~7 s instead of a minute.
set -euo pipefail

DIR=${GFSA_SLURM_DIR:-/tmp/gfsa-slurm}
CONF=$DIR/etc/slurm.conf
PIDS=(munged slurmctld slurmd)

log() { echo "local-cluster: $*" >&2; }

alive() { [[ -f $DIR/run/$1.pid ]] && kill -0 "$(cat "$DIR/run/$1.pid")" 2>/dev/null; }

install_packages() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$DIR/log/apt.log" 2>&1 || {
    apt-get update -qq >>"$DIR/log/apt.log" 2>&1
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$DIR/log/apt.log" 2>&1
  } || { log "apt-get install failed, see $DIR/log/apt.log"; exit 1; }
}

write_config() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  ((cpus < 4)) && cpus=4
  mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
  # Job ids start from the clock, so a restarted cluster never reuses the ids of older sweep directories.
  local first=$(($(date +%s) % 50000000 + 1000))
  cat >"$CONF" <<EOF
# Written by slurm/local-cluster.sh: a one-node test cluster.
ClusterName=gfsa-local
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=${GFSA_SLURMCTLD_PORT:-16817}
SlurmdPort=${GFSA_SLURMD_PORT:-16818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$DIR/run/munge/munge.socket,cred_expire=5
StateSaveLocation=$DIR/state/ctld
SlurmdSpoolDir=$DIR/state/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0,sched_interval=1,bf_interval=2
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobRequeue=1
KillWait=10
MinJobAge=300
FirstJobId=$first
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
DefMemPerCPU=1024
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=urgent Nodes=$host Default=NO MaxTime=INFINITE State=UP PriorityTier=10
EOF
}

start_munge() {
  # A private munged (own key and socket) owned by user munge, as munged refuses to run as root.
  if [[ ! -f $DIR/etc/munge.key ]]; then
    dd if=/dev/urandom of="$DIR/etc/munge.key" bs=1024 count=1 status=none
  fi
  chown munge:munge "$DIR/etc/munge.key" "$DIR/run/munge"
  chmod 0400 "$DIR/etc/munge.key"
  chmod 0700 "$DIR/run/munge"
  runuser -u munge -- /usr/sbin/munged --key-file="$DIR/etc/munge.key" --socket="$DIR/run/munge/munge.socket" \
    --pid-file="$DIR/run/munge/munged.pid" --log-file="$DIR/run/munge/munged.log" \
    --seed-file="$DIR/run/munge/munged.seed" --force
  for _ in $(seq 50); do
    [[ -s $DIR/run/munge/munged.pid ]] && break
    sleep 0.1
  done
  cp "$DIR/run/munge/munged.pid" "$DIR/run/munged.pid"
}

wait_idle() {
  local host
  host=$(hostname -s)
  for _ in $(seq 300); do
    if SLURM_CONF=$CONF sinfo -h -n "$host" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      return 0
    fi
    sleep 0.2
  done
  log "the node did not come up; see $DIR/log/slurmctld.log and $DIR/log/slurmd.log"
  return 1
}

start() {
  if alive slurmctld && alive slurmd; then
    log "already running ($CONF)"
    return 0
  fi
  stop_daemons quiet
  [[ $EUID -eq 0 ]] || { log "must run as root (apt-get, munged, slurmd)"; exit 1; }
  rm -rf "$DIR/state" "$DIR/run"
  mkdir -p "$DIR/etc" "$DIR/log" "$DIR/run/munge" "$DIR/state/ctld" "$DIR/state/d"
  install_packages
  write_config
  start_munge
  /usr/sbin/slurmctld -c -f "$CONF"
  /usr/sbin/slurmd -f "$CONF"
  wait_idle
  log "up: export SLURM_CONF=$CONF"
}

stop_daemons() {
  local name pid
  for name in slurmd slurmctld munged; do
    [[ -f $DIR/run/$name.pid ]] || continue
    pid=$(cat "$DIR/run/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$DIR/run/$name.pid"
  done
  [[ ${1:-} == quiet ]] || log "stopped"
}

status() {
  local name ok=0
  for name in "${PIDS[@]}"; do
    if alive "$name"; then echo "$name: running (pid $(cat "$DIR/run/$name.pid"))"; else echo "$name: stopped"; ok=1; fi
  done
  ((ok == 0)) && SLURM_CONF=$CONF sinfo 2>/dev/null || true
  return $ok
}

case ${1:-} in
  start) start ;;
  stop) stop_daemons ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
