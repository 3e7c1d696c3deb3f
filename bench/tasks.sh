#!/usr/bin/env bash
# Task distribution benchmark: trivial tasks (n → 2n) on 2 workers, herd
# beside Node's cluster module and GNU parallel, same machine, same run.
#
#   bash bench/tasks.sh          # from the repo root; a few minutes
#
# Scenarios, each in a fresh cluster, ROUNDS times, interleaved; figures are
# medians of tasks/s with their range, and ratios to Node:
#
#   pool     herd.Pool, the Go library: bench/poolbench (a self-forking Go
#            program, worker.ServeTasks in the workers), N tasks; timed from
#            the first task to the last result, the workers already ready.
#   map-go   seq N | herd map -w 2 --inflight 256 -- ./double-go
#   map-py   seq NPY | herd map -w 2 --inflight 256 -- python3 examples/python/double.py
#            the rate is herd map's own summary line (from the map's start,
#            worker start-up included, to its end; herd's own start-up
#            left out); "wall" is N over the whole command's wall time.
#   node     Node cluster: bench/node-tasks.js, N tasks round-robin with
#            worker.send, at most 256 in flight per worker.
#   parallel seq M | parallel -j2 'echo $(({}*2))': a process per task,
#            for scale.
#
# Before the rounds, each herd map worker and parallel are checked on a
# few thousand tasks (the answers' sum); pool and node check every run's sum
# themselves. A scenario that fails or outlasts TIMEOUT stops the script
# with exit status 1.
#
# Knobs: ROUNDS=3, N=1000000, NPY=N, M=2000, WORKERS=2, INFLIGHT=256,
# TIMEOUT=600 (seconds per run); TASKS=int|raw goes to bench/poolbench.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
MEDIAN_FORMAT=%.0f # tasks/s

ROUNDS=${ROUNDS:-3}
N=${N:-1000000} NPY=${NPY:-${N:-1000000}} M=${M:-2000}
WORKERS=${WORKERS:-2} INFLIGHT=${INFLIGHT:-256} TIMEOUT=${TIMEOUT:-600}

die() { echo "bench/tasks.sh: $*" >&2; exit 1; }
command -v node >/dev/null || die "node is not installed"
command -v python3 >/dev/null || die "python3 is not installed"
if ! command -v parallel >/dev/null; then
	if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
		die "GNU parallel is not installed (Debian: apt-get install parallel)"
	fi
	echo "bench/tasks.sh: installing GNU parallel" >&2
	apt-get install -y -qq parallel >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq parallel >/dev/null 2>&1; } ||
		die "apt-get install parallel failed"
fi

tmp=$(mktemp -d)
cur= # the process group of the run under way
cleanup() {
	if [[ -n $cur ]]; then
		kill -TERM -- "-$cur" 2>/dev/null || true
		wait "$cur" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# GNU parallel asks for a citation once per user, in a scratch HOME here.
mkdir -p "$tmp/home/.parallel"
touch "$tmp/home/.parallel/will-cite"

CGO_ENABLED=0 go build -o "$tmp/herd" ./cmd/herd
CGO_ENABLED=0 go build -o "$tmp/double-go" ./examples/double-go
CGO_ENABLED=0 go build -o "$tmp/poolbench" ./bench/poolbench

echo '```'
echo "date:     $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "arch:     $(uname -m) (kernel $(uname -r)), nproc $(nproc), cpu $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "node:     $(node --version), go: $(go version | awk '{ print $3 }'), python: $(python3 --version | awk '{ print $2 }'), GNU parallel: $(parallel --version | awk 'NR == 1 { print $3 }')"
echo "runs:     $ROUNDS each, interleaved; WORKERS=$WORKERS INFLIGHT=$INFLIGHT N=$N NPY=$NPY M=$M"
echo '```'

# run OUT CMD...: CMD under the timeout, in a process group of its own
# (timeout makes one), stdout to OUT, stderr to $tmp/err. Its wall time in
# seconds goes to $secs.
secs=
run() {
	local out=$1 rc=0 t0 t1
	shift
	t0=$(date +%s%N)
	timeout -k 15 "$TIMEOUT" "$@" >"$out" 2>"$tmp/err" &
	cur=$!
	wait "$cur" || rc=$?
	cur=
	t1=$(date +%s%N)
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", (b - a) / 1e9 }')
	if ((rc == 124)); then
		echo "timed out after ${TIMEOUT}s" >>"$tmp/err"
	fi
	return $rc
}
fail() { # fail SCENARIO: show what it said, stop
	echo "bench/tasks.sh: $1 failed:" >&2
	sed 's/^/  /' "$tmp/err" >&2
	exit 1
}
rate() { awk -v n="$1" -v s="$2" 'BEGIN { printf "%.0f", n / s }'; }

PY=(python3 examples/python/double.py)
# map-go and map-py: herd map from seq; the summary line is checked.
map() { # map NAME COUNT WORKER...
	local name=$1 count=$2
	shift 2
	# shellcheck disable=SC2016 # expanded by that sh
	run /dev/null sh -c 'n=$1; shift; seq "$n" | "$@"' sh "$count" \
		"$tmp/herd" map -w "$WORKERS" --inflight "$INFLIGHT" -- "$@" || fail "$name"
	local line
	line=$(grep '^herd map: ' "$tmp/err" | tail -n 1) || true
	[[ $line =~ ^herd\ map:\ ([0-9]+)\ tasks,\ ([0-9]+)\ failed,\ ([0-9]+)\ retries,\ [^,]*,\ ([0-9]+)\ tasks/s ]] ||
		{ echo "no summary line" >>"$tmp/err"; fail "$name"; }
	if [[ ${BASH_REMATCH[1]} != "$count" || ${BASH_REMATCH[2]} != 0 ]]; then
		echo "want $count tasks, 0 failed" >>"$tmp/err"
		fail "$name"
	fi
	echo "$name ${BASH_REMATCH[4]}"
	echo "$name-wall $(rate "$count" "$secs")"
}
pool() {
	run "$tmp/out" env N="$N" WORKERS="$WORKERS" INFLIGHT="$INFLIGHT" "$tmp/poolbench" || fail pool
	awk '$1 == "pool_tasks_per_s" { print "pool", $2; ok = 1 } END { exit !ok }' "$tmp/out" || fail pool
}
nodefarm() {
	run "$tmp/out" env N="$N" WORKERS="$WORKERS" INFLIGHT="$INFLIGHT" node bench/node-tasks.js || fail node
	awk '$1 == "node_tasks_per_s" { print "node", $2; ok = 1 } END { exit !ok }' "$tmp/out" || fail node
}
par() { # par COUNT OUT
	# shellcheck disable=SC2016 # expanded by that sh, and by parallel's
	run "$2" env HOME="$tmp/home" sh -c 'seq "$1" | parallel -j"$2" --will-cite "echo \$(({}*2))"' \
		sh "$1" "$WORKERS" || fail parallel
}

# The answers are right: their sum, on a few thousand tasks.
check() { # check NAME OUT COUNT
	local got want=$(($3 * ($3 + 1)))
	got=$(awk '{ s += $1 } END { printf "%.0f", s }' "$2")
	[[ $got == "$want" ]] || { echo "$1: the answers sum to $got, want $want" >"$tmp/err"; fail "$1"; }
}
run "$tmp/out" sh -c 'seq 5000 | "$@"' sh "$tmp/herd" map -q -w "$WORKERS" --inflight "$INFLIGHT" -- "$tmp/double-go" || fail map-go
check map-go "$tmp/out" 5000
run "$tmp/out" sh -c 'seq 5000 | "$@"' sh "$tmp/herd" map -q -w "$WORKERS" --inflight "$INFLIGHT" -- "${PY[@]}" || fail map-py
check map-py "$tmp/out" 5000
par 200 "$tmp/out"
check parallel "$tmp/out" 200

declare -A V=()
for ((r = 1; r <= ROUNDS; r++)); do
	# In this shell, not in a $(...): a stop must find the run under way.
	{
		pool
		map map-go "$N" "$tmp/double-go"
		map map-py "$NPY" "${PY[@]}"
		nodefarm
		par "$M" /dev/null
		echo "parallel $(rate "$M" "$secs")"
	} >"$tmp/round"
	echo "round $r: $(tr '\n' ' ' <"$tmp/round")" >&2
	while read -r key val; do
		V[$key]+="$val "
	done <"$tmp/round"
done


# shellcheck disable=SC2086 # split the per-round values
node=$(median ${V[node]})
echo
echo "| scenario | tasks/s | / Node | target |"
echo "| --- | ---: | ---: | --- |"
row() { # row KEY LABEL TARGET
	local m ratio target=$3
	# shellcheck disable=SC2086
	m=$(median ${V[$1]})
	ratio=$(awk -v a="$m" -v b="$node" 'BEGIN { r = a / b; printf(r < 0.1 ? "%.4f" : "%.2f", r) }')
	if [[ $target != "" ]]; then
		if awk -v r="$ratio" -v t="$target" 'BEGIN { exit !(r >= t) }'; then target="≥ $target (met)"; else target="≥ $target (missed)"; fi
	fi
	# shellcheck disable=SC2086
	echo "| $2 | $(cell ${V[$1]}) | ${ratio}x | $target |"
}
row pool "herd.Pool (Go library), $N tasks" 5
row map-go "herd map, Go worker (double-go), $N tasks" 2
row map-go-wall "… same, whole command's wall time" ""
row map-py "herd map, Python worker (double.py), $NPY tasks" 0.5
row map-py-wall "… same, whole command's wall time" ""
row node "Node cluster (node-tasks.js), $N tasks" ""
row parallel "GNU parallel, a process per task, $M tasks" ""
