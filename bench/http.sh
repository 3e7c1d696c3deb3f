#!/usr/bin/env bash
# HTTP benchmark: herd run vs Node cluster vs hand-started reuseport servers.
#
#   bash bench/http.sh                 # from the repo root; ~8 min at the defaults
#
# Every scenario runs 2 workers and is measured with
#   wrk -t$THREADS -c$CONNS -d${DURATION}s http://127.0.0.1:PORT/
# once with keep-alive and once with 'Connection: close', after a 1 s warm-up.
# The whole list of scenarios is run ROUNDS times, interleaved (A B C, A B C,
# ...), and each figure is the median over the rounds with its range: on a
# 2-core machine one wrk run drifts by +-10% from the next, so a ratio of two
# single runs says little. Each ratio is the median of the per-round ratios
# (scenarios of one round run minutes apart, not hours).
#
# Scenarios:
#   node-single               one plain `node examples/node/hello.js`
#   node-cluster-rr           bench/node-cluster.js, cluster.SCHED_RR
#   node-cluster-none         bench/node-cluster.js, cluster.SCHED_NONE
#   herd-reuseport            herd run --balance reuseport, Node hello
#   herd-shared               herd run --balance shared, Node hello
#   go-handstarted-reuseport  2 x hello-go -reuseport started by hand
#   herd-reuseport-go         herd run --balance reuseport, hello-go
#
# Environment knobs:
#   DURATION=10     seconds per wrk run
#   ROUNDS=3        how many times the scenario list is run
#   THREADS=2       wrk threads (-t)
#   CONNS=64        wrk connections (-c)
#   BASE_PORT=18080 scenario i listens on BASE_PORT+i
#   HERD=PATH       use this herd binary instead of building ./cmd/herd
#   ONLY=REGEX      run only the scenarios whose name matches the extended
#                   regex, e.g. ONLY=node (node-*), ONLY=go, ONLY='^herd-'
#
# Needs go, node, curl and wrk; wrk and curl are installed with apt-get
# when missing (run as root). Exits non-zero if a scenario failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
BASE_PORT=${BASE_PORT:-18080}
ONLY=${ONLY:-}
WORKERS=2

SCENARIOS=(
	node-single
	node-cluster-rr
	node-cluster-none
	herd-reuseport
	herd-shared
	go-handstarted-reuseport
	herd-reuseport-go
)

need_herd=false need_go=false
for s in "${SCENARIOS[@]}"; do
	selected "$s" || continue
	[[ $s == herd-* ]] && need_herd=true
	[[ $s == *-go || $s == go-* ]] && need_go=true
done

# --- tools -----------------------------------------------------------------
need wrk curl

tmp=$(mktemp -d)
cur=     # tag of the scenario currently running
wrk_pid= # wrk currently running
# shellcheck disable=SC2317 # invoked by trap
cleanup() {
	[[ -n $wrk_pid ]] && kill "$wrk_pid" 2>/dev/null
	[[ -n $cur ]] && kill_tagged "$cur" KILL
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n ${HERD:-} ]]; then
	cp "$HERD" "$tmp/herd"
elif $need_herd; then
	go build -o "$tmp/herd" ./cmd/herd
fi
if $need_go; then go build -o "$tmp/hello-go" ./examples/hello-go; fi

# --- helpers ---------------------------------------------------------------

# stop PID TAG PORT: SIGTERM the scenario's main process, wait up to 10 s,
# then make sure nothing of it is left (SIGKILL the rest if needed).
stop() {
	local pid=$1 tag=$2 port=$3
	end_main "$pid"
	sweep "$tag" "$pid"
	cur=
	port_free "$port"
}

# bench PORT MODE: sets RPS to the req/s measured; MODE is keepalive or close.
# (Not a $(...) subshell, so that the traps can stop wrk.)
bench() {
	local url="http://127.0.0.1:$1/" out="$tmp/wrk.out"
	local -a hdr=()
	[[ $2 == close ]] && hdr=(-H 'Connection: close')
	run_wrk 1 "$out" "${hdr[@]}" "$url" # warm-up
	run_wrk "$DURATION" "$out" "${hdr[@]}" "$url"
	grep -E 'Socket errors|Non-2xx' "$out" | sed "s/^ */  $2: /" >&2 || true
	RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
	if [[ -z $RPS ]]; then
		echo "  $2: wrk gave no result:" >&2
		sed 's/^/  | /' "$out" | tail -5 >&2
	fi
}

# start NAME PORT: starts the scenario in its own process group; sets PID,
# cur (its tag) and WANT (how many distinct workers should answer).
start() {
	local name=$1 port=$2
	local -a cmd
	WANT=$WORKERS
	case $name in
	node-single)
		cmd=(env PORT="$port" node examples/node/hello.js)
		WANT=1
		;;
	node-cluster-rr | node-cluster-none)
		cmd=(env PORT="$port" WORKERS="$WORKERS" SCHED="${name#node-cluster-}" node bench/node-cluster.js)
		;;
	herd-reuseport | herd-shared)
		cmd=("$tmp/herd" run -w "$WORKERS" -l "127.0.0.1:$port" --balance "${name#herd-}" -- node examples/node/hello.js)
		;;
	herd-reuseport-go)
		cmd=("$tmp/herd" run -w "$WORKERS" -l "127.0.0.1:$port" --balance reuseport -- "$tmp/hello-go")
		;;
	go-handstarted-reuseport)
		# A shell that starts the copies and forwards SIGTERM to them.
		# shellcheck disable=SC2016 # expanded by the inner shell
		cmd=(bash -c '
			pids=()
			for ((i = 0; i < $1; i++)); do
				HERD_WORKER_ID=$i "$2" -addr "127.0.0.1:$3" -reuseport & pids+=($!)
			done
			trap "kill -TERM ${pids[*]}" TERM
			wait; wait' hand "$WORKERS" "$tmp/hello-go" "$port")
		;;
	*)
		echo "unknown scenario $name" >&2
		return 1
		;;
	esac
	cur="$tmp/$name"
	set -m # job control only for this job: it gets a process group of its own
	HERD_BENCH_TAG=$cur "${cmd[@]}" </dev/null >"$tmp/$name.log" 2>&1 &
	PID=$!
	set +m
}

# --- run -------------------------------------------------------------------

cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo '```'
echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "arch:    $(uname -m) (kernel $(uname -r))"
echo "nproc:   $(nproc)"
echo "cpu:     ${cpu:-unknown}"
echo "node:    $(node --version)"
echo "go:      $(go version | awk '{ print $3 }')"
echo "wrk:     $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }') -t$THREADS -c$CONNS -d${DURATION}s, $WORKERS workers per scenario, median of $ROUNDS rounds"
echo '```'

# KA/CL/RSS hold one value per round, space-separated.
declare -A KA=() CL=() RSS=()
failed=0
for ((round = 1; round <= ROUNDS; round++)); do
	i=0
	for name in "${SCENARIOS[@]}"; do
		port=$((BASE_PORT + i))
		i=$((i + 1))
		selected "$name" || continue
		echo "== round $round/$ROUNDS: $name (port $port)" >&2
		if listening "$port"; then
			echo "  port $port is already in use, skipping" >&2
			failed=1
			continue
		fi
		start "$name" "$port"
		if ! wait_ready "$port" "$PID" "$WANT"; then
			sed 's/^/  | /' "$tmp/$name.log" | tail -20 >&2
			stop "$PID" "$cur" "$port"
			failed=1
			continue
		fi
		rss=
		if [[ $name == herd-* ]]; then
			sleep 1 # idle, 2 workers up, before any load
			rss=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$PID/status" 2>/dev/null) || true
			RSS[$name]+="$rss "
		fi
		bench "$port" keepalive
		KA[$name]+="$RPS "
		ka=$RPS
		bench "$port" close
		CL[$name]+="$RPS "
		[[ -n $ka && -n $RPS ]] || failed=1
		echo "  keep-alive ${ka:-?} req/s, close ${RPS:-?} req/s${rss:+, primary RSS $rss MB}" >&2
		stop "$PID" "$cur" "$port"
	done
done

echo
rps_table

echo
echo "| ratio (median of per-round ratios) | keep-alive | close |"
echo "| --- | ---: | ---: |"
row() { echo "| $1 / $2 | $(paired "${KA[$1]:-}" "${KA[$2]:-}") | $(paired "${CL[$1]:-}" "${CL[$2]:-}") |"; }
row herd-reuseport node-cluster-rr
row herd-reuseport node-cluster-none
row herd-shared node-cluster-rr
row herd-shared node-cluster-none
row herd-reuseport-go go-handstarted-reuseport

if ((${#RSS[@]})); then
	echo
	for name in "${SCENARIOS[@]}"; do
		# shellcheck disable=SC2086
		[[ -n ${RSS[$name]:-} ]] && echo "herd primary RSS ($name, idle, $WORKERS workers): $(cell ${RSS[$name]}) MB"
	done
fi
exit "$failed"
