#!/usr/bin/env bash
# Message channel benchmark: herd's channel with a Go worker (bench/ipcbench)
# beside Node's cluster IPC (bench/node-ipc.js), same machine, same run.
#
#   bash bench/ipc.sh            # from the repo root; about a minute
#
# Each side is run ROUNDS times, interleaved; figures are medians with their
# range. One way: small messages ({"type":"n","data":i}) worker -> primary,
# as fast as the channel takes them. Round trip: worker -> primary ->
# worker, one at a time, driven by the worker's message handler. Each
# measurement runs in a fresh cluster (PHASE=rtt, PHASE=oneway).
#
# Beside them, the floor under any channel on this machine: the same round
# trips between two processes over a bare socket pair with blocking system
# calls (ipcbench PHASE=floor), so that a round trip can be read as "so
# many times the floor" where the machine's wake-up latency moves from run
# to run.
#
# Knobs: ROUNDS=5, MSGS=2000000 (one-way messages per run), RTT=20000.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

ROUNDS=${ROUNDS:-5}
export MSGS=${MSGS:-2000000} RTT=${RTT:-20000}

command -v node >/dev/null || { echo "bench/ipc.sh: node is not installed" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/ipcbench" ./bench/ipcbench

echo '```'
echo "date:    $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "arch:    $(uname -m) (kernel $(uname -r)), nproc $(nproc), cpu $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "node:    $(node --version), go: $(go version | awk '{ print $3 }')"
echo "runs:    $ROUNDS each, interleaved; MSGS=$MSGS RTT=$RTT"
echo '```'

declare -A V=()
for ((r = 1; r <= ROUNDS; r++)); do
	for side in herd node; do
		out=
		# Each measurement in a fresh process: the round trips must not run
		# in the aftermath (garbage, queues) of the one-way flood.
		for phase in rtt oneway; do
			if [[ $side == herd ]]; then
				out+=$(PHASE=$phase "$tmp/ipcbench" 2>"$tmp/err") || { cat "$tmp/err" >&2; exit 1; }
			else
				out+=$(PHASE=$phase node bench/node-ipc.js 2>"$tmp/err") || { cat "$tmp/err" >&2; exit 1; }
			fi
			out+=$'\n'
		done
		if [[ $side == herd ]]; then
			# What no channel can beat here (see ipcbench's PHASE=floor).
			out+=$(PHASE=floor "$tmp/ipcbench" 2>"$tmp/err") || { cat "$tmp/err" >&2; exit 1; }
			out+=$'\n'
		fi
		echo "round $r $side: $(echo "$out" | tr '\n' ' ')" >&2
		while read -r key val; do
			V[$side.$key]+="$val "
		done <<<"$(grep . <<<"$out")"
	done
done


echo
echo "| figure | herd (Go worker) | Node cluster | herd / Node |"
echo "| --- | ---: | ---: | ---: |"
for key in oneway_msgs_per_s rtt_median_us rtt_p99_us; do
	# shellcheck disable=SC2086 # split the per-round values
	h=$(median ${V[herd.$key]}) n=$(median ${V[node.$key]})
	# shellcheck disable=SC2086
	echo "| $key | $(cell ${V[herd.$key]}) | $(cell ${V[node.$key]}) | $(awk -v a="$h" -v b="$n" 'BEGIN { printf "%.2fx", a / b }') |"
done
echo
echo "The floor: the same round trips between two processes over a bare socket"
echo "pair, blocking read(2)/write(2), no JSON, no event loop (ipcbench PHASE=floor):"
echo
echo "| figure | floor | herd / floor | Node / floor |"
echo "| --- | ---: | ---: | ---: |"
for key in rtt_median_us rtt_p99_us; do
	# shellcheck disable=SC2086
	f=$(median ${V[herd.floor_$key]}) h=$(median ${V[herd.$key]}) n=$(median ${V[node.$key]})
	# shellcheck disable=SC2086
	echo "| $key | $(cell ${V[herd.floor_$key]}) | $(awk -v a="$h" -v b="$f" 'BEGIN { printf "%.1fx", a / b }') | $(awk -v a="$n" -v b="$f" 'BEGIN { printf "%.1fx", a / b }') |"
done
