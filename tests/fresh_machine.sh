#!/usr/bin/env bash
# A rehearsal of CI on a new machine (issue 23): puts this machine back into the state of a new one for
# everything the suite installs or creates, then runs .ci/run from a fresh clone with HOME an empty folder.
#
#   tests/fresh_machine.sh [--runs N] [--kill-after SECONDS] [--demo] [--reset-only]
#
#   --runs N            .ci/run N times in a row in the same clone (default 3): leftovers of each run meet the next
#   --kill-after S      then one more run killed with SIGKILL (its whole process group) after S seconds, and one
#                       more after it that must pass (what a run killed halfway by a time limit leaves behind)
#   --demo              first `make demo` in its own fresh clone, and check that its venv holds no test package
#   --reset-only        put the machine back and stop
#
# Needs root (it purges Debian packages and removes namespaces). What it removes: the packages .ci/run installs
# (openssh-server, Slurm, munge, rsync) with what came with them, munge's and sshd's folders, Slurm's state,
# every namespace host, bridge and link of testing/netns.py, /tmp/mxft-*, /srv/mxft-host, and the clone's venv.
# It commits nothing and reads only committed work: the clone is of HEAD. Each run's last lines and its time
# go to the summary at the end; the whole output of run K is in $WORK/run-K.log.
set -uo pipefail

runs=3 kill_after="" demo=0 reset_only=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --kill-after) kill_after="$2"; shift 2 ;;
        --demo) demo=1; shift ;;
        --reset-only) reset_only=1; shift ;;
        *) echo "usage: $0 [--runs N] [--kill-after SECONDS] [--demo] [--reset-only]" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (it purges packages and removes network namespaces)" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
WORK=${WORK:-/tmp/fresh-machine}
PACKAGES="openssh-server slurmctld slurmd slurm-client munge rsync"

kill_named() {  # every process whose command line names one of the words given
    local pattern="$1"
    pkill -KILL -f "$pattern" 2>/dev/null || true
}

reset_machine() {
    echo "== putting the machine back into a new one's state"
    kill_named '/tmp/mxft-'
    for daemon in slurmctld slurmd slurmstepd munged; do pkill -KILL -x "$daemon" 2>/dev/null || true; done
    for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^mxft-h[0-9]+$/ {print $1}'); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    sleep 0.5
    ss -K dst 10.231.77.0/24 >/dev/null 2>&1 || true
    for link in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E '^(mxv|mxw)-h[0-9]+$'); do
        ip link del "$link" 2>/dev/null || true
    done
    for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^mxft-h[0-9]+$/ {print $1}'); do ip netns del "$ns"; done
    for bridge in mxftbr0 mxftbr1; do ip link del "$bridge" 2>/dev/null || true; done
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --auto-remove $PACKAGES >/dev/null 2>&1 || true
    rm -rf /run/munge /etc/munge /var/log/munge /var/lib/munge /run/sshd /etc/slurm /var/lib/slurm /var/log/slurm \
        /var/spool/slurmd /run/slurm* /srv/mxft-host /tmp/mxft-*
    userdel munge 2>/dev/null || true
    userdel slurm 2>/dev/null || true
    for left in /usr/sbin/sshd /usr/sbin/slurmd /usr/sbin/munged /run/munge /tmp/mxft-slurm /tmp/mxft-netns; do
        [ ! -e "$left" ] || { echo "fresh_machine: $left is still there" >&2; exit 1; }
    done
    [ -z "$(ip netns list 2>/dev/null | grep mxft-)" ] || { echo "fresh_machine: namespaces left" >&2; exit 1; }
}

fresh_clone() {  # a clone of HEAD at $1 with an empty home beside it
    rm -rf "$1" "$1.home"
    git clone -q "$repo" "$1" && mkdir -p "$1.home"
}

summary=()
one_run() {  # one .ci/run in the clone $1 as run $2; $3: seconds after which it is killed (empty: never)
    local clone="$1" k="$2" limit="${3:-}" started rc
    started=$(date +%s)
    echo "== run $k (${limit:+killed after $limit s, }log $WORK/run-$k.log)"
    # setsid execs in place (a background job is no group leader): the run is a process group of its own, $!
    HOME="$clone.home" CI=true setsid bash -c 'cd "$0" && exec bash .ci/run' "$clone" >"$WORK/run-$k.log" 2>&1 &
    local pid=$!
    if [ -n "$limit" ]; then
        sleep "$limit"
        if [ "$(ps -o pgid= "$pid" | tr -d ' ')" = "$pid" ]; then kill -KILL -- "-$pid"; else kill -KILL "$pid"; fi
    fi
    wait "$pid"; rc=$?
    local line
    line=$(grep -E '(passed|failed|error)' "$WORK/run-$k.log" | tail -n 1)
    summary+=("run $k: exit $rc in $(( $(date +%s) - started )) s: ${line:-no pytest summary}")
    echo "${summary[-1]}"
    return $rc
}

mkdir -p "$WORK"
reset_machine
[ "$reset_only" -eq 0 ] || exit 0
failed=0
if [ "$demo" -eq 1 ]; then
    fresh_clone "$WORK/demo"
    echo "== make demo (log $WORK/demo.log)"
    if (cd "$WORK/demo" && HOME="$WORK/demo.home" make demo) >"$WORK/demo.log" 2>&1; then
        test_packages=$("$WORK/demo/.venv/bin/pip" list 2>/dev/null | grep -iE '^(pytest|hypothesis|tensorboard|opencv)' || true)
        summary+=("make demo: passed, $(tail -n 1 "$WORK/demo.log"); test packages in its venv: ${test_packages:-none}")
        [ -z "$test_packages" ] || failed=1
    else
        summary+=("make demo: FAILED (see $WORK/demo.log)"); failed=1
    fi
fi
fresh_clone "$WORK/ci"
for k in $(seq 1 "$runs"); do one_run "$WORK/ci" "$k" || failed=1; done
if [ -n "$kill_after" ]; then
    one_run "$WORK/ci" killed "$kill_after"
    one_run "$WORK/ci" after-kill || failed=1
fi
echo "== summary (the clones are of $(git -C "$WORK/ci" rev-parse --short HEAD))"
printf '%s\n' "${summary[@]}"
exit $failed
