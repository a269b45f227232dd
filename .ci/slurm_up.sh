#!/usr/bin/env bash
# Start a private single-node Slurm cluster for the Slurm tests (tests/test_slurm.py):
# this host is both controller and compute node, with 4 simulated GPUs.
#
# - Installs slurmctld, slurmd, slurm-client and munge from Debian when sbatch is
#   missing (apt-get, bounded in time).
# - Everything lives under one folder (default /tmp/flywheel-ci-slurm): its own
#   slurm.conf and gres.conf, its own munged on its own socket and key, free ports,
#   state, spool and logs. Nothing under /etc is written, and a host's real Slurm
#   or munge is left alone.
# - The GPUs are character devices made with `mknod PATH c 1 3` (/dev/null's
#   numbers): Slurm refuses plain files in gres.conf. Jobs asking --gres=gpu:K get
#   CUDA_VISIBLE_DEVICES with K of 0..3, as on a real GPU node.
# - Never fails CI: when apt, root or a daemon is missing it says why on stderr and
#   exits 0 printing nothing, and the Slurm tests skip with that reason.
# - Prints the path of the cluster's slurm.conf on stdout (last line) once `sinfo`
#   shows the node idle: export it as SLURM_CONF for sbatch/squeue/scancel.
#
# Stop it with .ci/slurm_down.sh (same FLYWHEEL_CI_SLURM).
set -u

DIR="${FLYWHEEL_CI_SLURM:-/tmp/flywheel-ci-slurm}"
INSTALL_TIMEOUT="${FLYWHEEL_CI_SLURM_INSTALL_TIMEOUT:-300}"
START_TIMEOUT="${FLYWHEEL_CI_SLURM_START_TIMEOUT:-60}"
GPUS=4

say() { printf 'slurm_up: %s\n' "$*" >&2; }
give_up() { say "$* — the Slurm tests will be skipped"; exit 0; }

if [ "$(id -u)" != 0 ]; then
    give_up "not root (the daemons and mknod need root)"
fi

install_slurm() {
    command -v apt-get >/dev/null 2>&1 || give_up "sbatch is not installed and there is no apt-get"
    say "installing slurmctld slurmd slurm-client munge from Debian"
    export DEBIAN_FRONTEND=noninteractive
    timeout "$INSTALL_TIMEOUT" apt-get update -qq >&2 \
        || give_up "apt-get update failed or took over ${INSTALL_TIMEOUT}s"
    # The packages' own services are not wanted (there may be no init to run them).
    timeout "$INSTALL_TIMEOUT" apt-get install -y -qq --no-install-recommends \
        slurmctld slurmd slurm-client munge >&2 \
        || give_up "apt-get install slurmctld slurmd slurm-client munge failed or took over ${INSTALL_TIMEOUT}s"
}

for tool in sbatch slurmctld slurmd munged mungekey; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        install_slurm
        break
    fi
done
export PATH="$PATH:/usr/sbin"
for tool in sbatch sinfo slurmctld slurmd munged; do
    command -v "$tool" >/dev/null 2>&1 || give_up "$tool is still missing after the install"
done

# A previous cluster in the same folder (a crashed CI run) goes first.
bash "$(dirname "$0")/slurm_down.sh" >/dev/null 2>&1

rm -rf "$DIR"
mkdir -p "$DIR"/{etc,dev,state,spool,log,munge} || give_up "cannot create $DIR"
chmod 0755 "$DIR" "$DIR/etc"
chmod 0700 "$DIR/munge" "$DIR/state" "$DIR/spool"

# --- munge: a private daemon with its own key and socket
MUNGE_SOCKET="$DIR/munge/munge.socket"
if command -v mungekey >/dev/null 2>&1; then
    mungekey --create --keyfile="$DIR/munge/munge.key" >&2 || give_up "mungekey failed"
else
    dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
fi
chmod 0400 "$DIR/munge/munge.key"
munged --force --socket="$MUNGE_SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
    --seed-file="$DIR/munge/munged.seed" >&2 \
    || give_up "munged did not start (see $DIR/log/munged.log)"

# --- the simulated GPUs
for index in $(seq 0 $((GPUS - 1))); do
    mknod "$DIR/dev/gpu$index" c 1 3 || give_up "mknod $DIR/dev/gpu$index failed"
done

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
CTLD_PORT="$(free_port)"
SLURMD_PORT="$(free_port)"
HOST="$(hostname -s)"

cat >"$DIR/etc/slurm.conf" <<EOF
# Written by .ci/slurm_up.sh: a private single-node cluster for the tests.
ClusterName=flywheel-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# The node's real CPU count may be small: say 8, so both tasks of an array fit.
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# What an admin's cluster commonly has: 30 s from SIGTERM to SIGKILL.
KillWait=30
# Finished jobs stay visible to 'scontrol show job' (their exit code) for 10 min.
MinJobAge=600
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=8 Boards=1 SocketsPerBoard=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=1000 Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
{
    echo "# Simulated GPUs: character devices with /dev/null's numbers."
    for index in $(seq 0 $((GPUS - 1))); do
        echo "NodeName=$HOST Name=gpu File=$DIR/dev/gpu$index"
    done
} >"$DIR/etc/gres.conf"

export SLURM_CONF="$DIR/etc/slurm.conf"
slurmctld -f "$SLURM_CONF" >&2 || give_up "slurmctld did not start (see $DIR/log/slurmctld.log)"
slurmd -f "$SLURM_CONF" >&2 || give_up "slurmd did not start (see $DIR/log/slurmd.log)"

deadline=$((SECONDS + START_TIMEOUT))
until sinfo --noheader --nodes="$HOST" --format=%t 2>/dev/null | grep -qx 'idle'; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        say "node state: $(sinfo --noheader --format='%t %E' 2>&1 | head -1)"
        tail -n 5 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 2>/dev/null
        bash "$(dirname "$0")/slurm_down.sh" >&2
        give_up "the node was not idle within ${START_TIMEOUT}s"
    fi
    sleep 0.5
done
say "single-node cluster up: $HOST with gpu:$GPUS (SLURM_CONF=$SLURM_CONF)"
echo "$SLURM_CONF"
