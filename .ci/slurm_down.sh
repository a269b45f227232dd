#!/usr/bin/env bash
# Stop the private cluster of .ci/slurm_up.sh (same FLYWHEEL_CI_SLURM): cancel its
# jobs, then stop slurmd, slurmctld and munged by their pid files (never by name:
# a host's own Slurm is left alone). Bounded: whatever is still alive after 15 s
# gets SIGKILL. Always exits 0.
set -u

DIR="${FLYWHEEL_CI_SLURM:-/tmp/flywheel-ci-slurm}"
[ -d "$DIR" ] || exit 0
export PATH="$PATH:/usr/sbin"

if [ -f "$DIR/etc/slurm.conf" ] && command -v scancel >/dev/null 2>&1; then
    SLURM_CONF="$DIR/etc/slurm.conf" timeout 10 scancel --full --user=root >/dev/null 2>&1 || true
fi

pids=()
for pidfile in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"; do
    [ -f "$pidfile" ] || continue
    pid="$(cat "$pidfile" 2>/dev/null)"
    case "$pid" in '' | *[!0-9]*) continue ;; esac
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
done

deadline=$((SECONDS + 15))
for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
done
rm -f "$DIR/slurmd.pid" "$DIR/slurmctld.pid" "$DIR/munge/munged.pid"
echo "slurm_down: stopped the cluster in $DIR" >&2
exit 0
