#!/usr/bin/env bash
# A/B of the worker benchmark: two commits, alternating, on the configured stack.
#
#   bash bench/ab_worker.sh A B PAIRS [bench_worker.py arguments...]
#   bash bench/ab_worker.sh 6e552c5 HEAD 3 --artefact artifacts/diginetica_rec --events 15000 \
#       --latency-events 3000 --rate 500,1000
#
# Each commit is checked out once as a worktree under .state/ab/ (beside a link to ../shared, which the
# benches read from there), and bench/bench_worker.py runs from it with PYTHONPATH set to it: the project's
# editable install would otherwise import this checkout's code in both arms. Both arms use this checkout's
# stack (IGREC_STATE_DIR, IGREC_CACHE_DIR made absolute) and a relative --artefact is taken from here.
# A or B may be REV=ARTEFACT: that arm scores with its own artefact (a model change needs a re-export),
#   bash bench/ab_worker.sh 375d117=artifacts/old HEAD=artifacts/new 3 --events 15000 --rate 500
# Pairs alternate which commit goes first (machine drift cancels out). Full outputs go to .state/ab/logs/;
# the summary rows of each run are printed as they finish.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
a_spec=$1 b_spec=$2 a_rev=${1%%=*} b_rev=${2%%=*} pairs=$3
arm_artefact() {  # the artefact given with REV=ARTEFACT, made absolute; empty without one
    case $1 in *=*) (cd "$root" && realpath "${1#*=}") ;; esac
}
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
# both arms use this checkout's stack and downloads, not folders of their own under the worktrees
export IGREC_STATE_DIR IGREC_CACHE_DIR
IGREC_STATE_DIR=$(realpath -m "${IGREC_STATE_DIR:-$root/.state}")
IGREC_CACHE_DIR=$(realpath -m "${IGREC_CACHE_DIR:-$root/deploy/.cache}")
ab=$root/.state/ab
mkdir -p "$ab/logs"
ln -sfn "$(cd "$root/.." && pwd)/shared" "$ab/shared"

args=()
while [ $# -gt 0 ]; do
    if [ "$1" = --artefact ] && [ $# -gt 1 ]; then
        args+=(--artefact "$(cd "$root" && realpath "$2")")
        shift 2
    else
        args+=("$1")
        shift
    fi
done

checkout() {  # worktree of a commit; prints its folder
    local sha dir
    sha=$(git -C "$root" rev-parse --short "$1^{commit}")
    dir=$ab/$sha
    [ -d "$dir" ] || git -C "$root" worktree add --detach --quiet "$dir" "$sha"
    echo "$dir"
}
a_dir=$(checkout "$a_rev")
b_dir=$(checkout "$b_rev")
a_art=$(arm_artefact "$a_spec") b_art=$(arm_artefact "$b_spec")

run() {  # one bench run of one arm
    local name=$1 dir=$2 pair=$3 artefact=$4 log
    log=$ab/logs/pair${pair}_${name}_$(basename "$dir").log
    echo "=== pair $pair, $name ($(basename "$dir")${artefact:+, $artefact}), $(date +%H:%M:%S)"
    (cd "$dir" && PYTHONPATH=$dir "$root/.venv/bin/python" bench/bench_worker.py "${args[@]}" \
        ${artefact:+--artefact "$artefact"} >"$log" 2>&1) \
        || { echo "failed: see $log"; return 1; }
    grep -E '^(aiokafka|worker)|per event|all told' "$log"
}

for pair in $(seq 1 "$pairs"); do
    if [ $((pair % 2)) -eq 1 ]; then
        run A "$a_dir" "$pair" "$a_art"; run B "$b_dir" "$pair" "$b_art"
    else
        run B "$b_dir" "$pair" "$b_art"; run A "$a_dir" "$pair" "$a_art"
    fi
done
echo "logs: $ab/logs"
