#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for tests/test_slurm.py (and for trying
# profiles/slurm by hand): munged, slurmctld and slurmd as plain daemons (no systemd), no slurmdbd,
# one fake GPU. Installs Debian's packages first when missing. Idempotent: a cluster this script
# started earlier and that still answers is reused.
#
#   sudo tests/slurm/start_cluster.sh      # then: sinfo; squeue; tests/slurm/stop_cluster.sh
#
# Exit status: 0 the cluster is up; 3 it cannot run here (not root, no apt-get, packages not
# installable, or /etc/slurm/slurm.conf belongs to a real cluster), the test skips; anything else is
# a real failure (see the logs under $STATE).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE="${FEATGAP_SLURM_STATE:-/var/lib/featgap-slurm}"
CONF=/etc/slurm/slurm.conf   # fixed: the jobstep executor drops SLURM_CONF from job environments
GRES=/etc/slurm/gres.conf
MARK="# featgap test cluster"
PACKAGES=(munge slurmctld slurmd slurm-client)

skip() { echo "start_cluster: cannot run here: $*" >&2; exit 3; }
log() { echo "start_cluster: $*" >&2; }

[ "$(id -u)" -eq 0 ] || skip "needs root (installs packages, writes $CONF, starts daemons)"

# 1. Packages.
missing=()
for cmd in munged slurmctld slurmd sbatch squeue scontrol; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || skip "missing ${missing[*]} and no apt-get"
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } \
        >"/tmp/featgap-slurm-apt.log" 2>&1 \
        || skip "apt-get install ${PACKAGES[*]} failed (see /tmp/featgap-slurm-apt.log)"
fi

# 2. Configuration: the real CPUs and memory of this machine (slurmd -C), one fake GPU.
if [ -e "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARK"; then
    skip "$CONF exists and was not written by this script (a real cluster?); not touching it"
fi
node="$(hostname -s)"
hw="$(slurmd -C | head -n1)"
cpus="$(sed -n 's/.* CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
mem="$(sed -n 's/.* RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
[ -n "$cpus" ] && [ -n "$mem" ] || { log "cannot parse 'slurmd -C': $hw"; exit 1; }
mem=$((mem * 95 / 100))   # a little under the total, or slurmd drains the node as "Low RealMemory"
render() { sed -e "s|@NODE@|$node|g" -e "s|@CPUS@|$cpus|g" -e "s|@MEM@|$mem|g" -e "s|@STATE@|$STATE|g" "$1"; }
new_conf="$(render "$HERE/slurm.conf.in")"
new_gres="$(render "$HERE/gres.conf.in")"

# 3. Reuse a running cluster with the same configuration.
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
node_ready() { sinfo -h -n "$node" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated|completing)'; }
if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new_conf" ] && [ -f "$GRES" ] && [ "$(cat "$GRES")" = "$new_gres" ] \
    && munge_ok && scontrol ping 2>/dev/null | grep -q UP && node_ready; then
    log "reusing the running cluster ($node: $cpus CPUs, $mem MB, 1 fake GPU)"
    exit 0
fi
"$HERE/stop_cluster.sh" >/dev/null 2>&1 || true

mkdir -p /etc/slurm "$STATE/slurmctld" "$STATE/slurmd"
printf '%s\n' "$new_conf" >"$CONF"
printf '%s\n' "$new_gres" >"$GRES"

# 4. munged (as the munge user, as the package would run it).
if ! munge_ok; then
    if [ ! -s /etc/munge/munge.key ]; then
        log "creating /etc/munge/munge.key"
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null; then mungekey --create --force; else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
        chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge_ok && break; sleep 0.2; done
    munge_ok || { log "munged did not come up (see /var/log/munge/munged.log)"; exit 1; }
    touch "$STATE/munged.ours"   # stop_cluster.sh stops munged only if this script started it
fi

# 5. slurmctld (clean state: -c), then slurmd; wait until the node takes jobs.
slurmctld -c
for _ in $(seq 50); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
slurmd
for _ in $(seq 150); do node_ready && break; sleep 0.2; done
if ! node_ready; then
    log "the node did not become idle: $(sinfo -h -N -o '%N %T %E' 2>&1)"
    tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
    exit 1
fi
log "cluster up: $node, $cpus CPUs, $mem MB, 1 fake GPU, partition 'debug'; logs in $STATE"
