#!/usr/bin/env bash
# Stop the test cluster that tests/slurm/start_cluster.sh started: slurmd, slurmctld, munged, each
# by the pid in its pid file (never by name). Leaves packages and /etc/slurm in place.
set -uo pipefail

STATE="${FEATGAP_SLURM_STATE:-/var/lib/featgap-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# featgap test cluster"

if [ -e "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARK"; then
    echo "stop_cluster: $CONF was not written by start_cluster.sh; not stopping anything" >&2
    exit 3
fi

stop_pidfile() {
    local pidfile="$1" pid
    [ -s "$pidfile" ] || return 0
    pid="$(cat "$pidfile")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
}

# Running jobs first, so no job outlives its slurmd.
command -v scancel >/dev/null && scancel --full --quiet --user root 2>/dev/null
stop_pidfile "$STATE/slurmd.pid"
stop_pidfile "$STATE/slurmctld.pid"
if [ -e "$STATE/munged.ours" ]; then
    stop_pidfile /run/munge/munged.pid
    rm -f "$STATE/munged.ours"
fi
echo "stop_cluster: stopped" >&2
