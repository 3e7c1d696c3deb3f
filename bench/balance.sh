#!/usr/bin/env bash
# Balancing benchmark: herd's modes that see each connection (the primary
# accepts it) beside Node's cluster round-robin and nginx in front of two
# plain Node servers.
#
#   bash bench/balance.sh              # from the repo root; ~7 min at the defaults
#
# Every scenario runs 2 workers with the same app logic (200 "hello from
# worker N pid P\n" or "hello from port P pid N\n", with Content-Length) and
# is measured with
#   wrk -t$THREADS -c$CONNS -d${DURATION}s http://127.0.0.1:PORT/
# once with keep-alive and once with 'Connection: close', after a 1 s warm-up.
# The whole list of scenarios is run ROUNDS times, interleaved (A B C, A B C,
# ...), and each figure is the median over the rounds with its range; each
# ratio is the median of the per-round ratios (as in bench/http.sh).
#
# Scenarios:
#   node-cluster-rr   bench/node-cluster.js, cluster.SCHED_RR: Node's primary
#                     accepts and passes each connection's handle to a worker
#   herd-round-robin  herd run --balance round-robin, examples/node/handoff.js
#                     (herd's primary accepts and hands each connection over
#                     Node's own IPC channel)
#   herd-least-conn   the same with --balance least-conn (informational)
#   nginx-rr          nginx, worker_processes auto (2 here), upstream of
#                     2 x `PORT=P node examples/node/port.js`, round-robin,
#                     access_log off; by default without upstream keepalive
#                     (nginx's default: a new backend connection per
#                     request, as herd's proxy, a byte proxy, opens one per
#                     client connection); NGINX_KEEPALIVE=64 pools backend
#                     connections (HTTP/1.1, Connection "") for comparison
#   herd-proxy        herd run --balance proxy, examples/node/port.js (herd's
#                     primary proxies bytes; a new backend connection per
#                     client connection, no pooling)
#
# Why worker_processes auto (one nginx worker per core, 2 here) rather than
# 1: herd's primary is a Go process that runs on both cores (GOMAXPROCS =
# 2), so nginx gets the same; auto is also what nginx's packages ship
# (Debian's /etc/nginx/nginx.conf), and on the 2-core development machine
# it was the faster of the two in short trial runs (keep-alive ~28k against
# ~20k req/s with one worker, close ~14k against ~12k): the target is set
# against the stronger baseline. NGINX_WORKERS=1 runs the one-worker setup; the header
# says which one ran.
#
# Reported: req/s per scenario (keep-alive, close); the ratios
#   herd-round-robin / node-cluster-rr  targets: >= 100% keep-alive, >= 150% close
#   herd-proxy / nginx-rr               target:  >= 90% on both
# and the CPU time of the "front" (the process that accepts: the herd
# primary, the Node cluster primary, nginx master + worker) and of the Node
# app processes during each DURATION-second run (utime + stime from
# /proc/PID/stat, before and after), and both per request. Progress and wrk's error lines go to stderr, the report
# (markdown) to stdout.
#
# Environment knobs:
#   DURATION=10       seconds per wrk run
#   ROUNDS=3          how many times the scenario list is run
#   THREADS=2         wrk threads (-t)
#   CONNS=64          wrk connections (-c)
#   BASE_PORT=18200   scenario i listens on BASE_PORT+i; nginx's two Node
#                     servers on BASE_PORT+50 and BASE_PORT+51
#   NGINX_WORKERS=auto  nginx worker_processes (auto or a number)
#   HERD=PATH         use this herd binary instead of building ./cmd/herd
#   ONLY=REGEX        run only the scenarios whose name matches the extended
#                     regex, e.g. ONLY=herd, ONLY='proxy|nginx'
#
# Needs go, node, curl, wrk and nginx; wrk, curl and nginx (nginx-light) are
# installed with apt-get when missing (run as root). Exits non-zero if a
# scenario failed to start or gave no result.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-64}
BASE_PORT=${BASE_PORT:-18200}
NGINX_WORKERS=${NGINX_WORKERS:-auto}
NGINX_KEEPALIVE=${NGINX_KEEPALIVE:-0}
ONLY=${ONLY:-}
WORKERS=2

SCENARIOS=(
	node-cluster-rr
	herd-round-robin
	herd-least-conn
	nginx-rr
	herd-proxy
)

need_herd=false need_nginx=false
for s in "${SCENARIOS[@]}"; do
	selected "$s" || continue
	[[ $s == herd-* ]] && need_herd=true
	[[ $s == nginx-* ]] && need_nginx=true
done

# --- tools -----------------------------------------------------------------
PATH=$PATH:/usr/sbin:/sbin # where Debian puts nginx
need wrk curl
! $need_nginx || need nginx=nginx-light

tmp=$(mktemp -d) # 0700: also the directory of the control sockets
cur=             # tag of the scenario currently running
PID=             # its main process (and process group)
wrk_pid=         # wrk currently running
# shellcheck disable=SC2317 # invoked by trap
cleanup() {
	[[ -n $wrk_pid ]] && kill "$wrk_pid" 2>/dev/null
	if [[ -n $cur ]]; then
		kill_tagged "$cur" KILL
		[[ -z $PID ]] || kill -KILL -- -"$PID" 2>/dev/null
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ -n ${HERD:-} ]]; then
	cp "$HERD" "$tmp/herd"
elif $need_herd; then
	CGO_ENABLED=0 go build -o "$tmp/herd" ./cmd/herd
fi

# --- helpers ---------------------------------------------------------------

# group_pids PGID: the live processes in process group PGID (nginx
# overwrites its environment with its process title, so tagged_pids does
# not find its processes).
group_pids() {
	local f stat
	local -a s
	for f in /proc/[0-9]*/stat; do
		{ read -r stat <"$f"; } 2>/dev/null || continue
		read -ra s <<<"${stat##*) }" # s[0] is the state, s[2] the pgrp
		[[ ${s[2]} == "$1" && ${s[0]} != Z ]] && echo "${f//[^0-9]/}"
	done
	return 0
}

children() { # children PID: its live child processes
	local p
	# shellcheck disable=SC2013 # pids are words
	for p in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
		alive "$p" && echo "$p"
	done
	return 0
}

clk_tck=$(getconf CLK_TCK)

# cpu_ticks PIDS...: the sum of utime + stime of the processes (all their
# threads), in clock ticks; a process that is gone counts 0.
cpu_ticks() {
	local p stat t=0
	local -a f
	for p in "$@"; do
		{ read -r stat <"/proc/$p/stat"; } 2>/dev/null || continue
		read -ra f <<<"${stat##*) }" # fields from the 3rd on: utime is the 14th
		t=$((t + f[11] + f[12]))
	done
	echo "$t"
}

# stop PID TAG PORTS...: SIGTERM the scenario's main process, wait up to
# 10 s, then make sure nothing of it is left (SIGKILL the rest if needed)
# and that the PORTS are free again.
stop() {
	local pid=$1 tag=$2 port
	shift 2
	end_main "$pid"
	sweep "$tag" "$pid"
	cur='' PID=''
	for port in "$@"; do
		port_free "$port"
	done
}

# bench PORT MODE: sets RPS to the req/s measured, FCPU and ACPU to the
# seconds of CPU the FRONT and APP processes used during the measured run,
# and FUS and AUS to their microseconds of CPU per request; MODE is keepalive
# or close. wrk's error lines are kept in ERRS. (Not a $(...) subshell, so
# that the traps can stop wrk.)
bench() {
	local url="http://127.0.0.1:$1/" out="$tmp/wrk.out" f0 a0 f1 a1 reqs
	local -a hdr=()
	[[ $2 == close ]] && hdr=(-H 'Connection: close')
	run_wrk 1 "$out" "${hdr[@]}" "$url" # warm-up
	f0=$(cpu_ticks "${FRONT[@]}")
	a0=$(cpu_ticks "${APP[@]}")
	run_wrk "$DURATION" "$out" "${hdr[@]}" "$url"
	f1=$(cpu_ticks "${FRONT[@]}")
	a1=$(cpu_ticks "${APP[@]}")
	FCPU=$(awk -v t=$((f1 - f0)) -v hz="$clk_tck" 'BEGIN { printf "%.2f", t / hz }')
	ACPU=$(awk -v t=$((a1 - a0)) -v hz="$clk_tck" 'BEGIN { printf "%.2f", t / hz }')
	local errs
	local -a lines
	errs=$(grep -E 'Socket errors|Non-2xx' "$out" | sed 's/^ *//') || true
	if [[ -n $errs ]]; then
		mapfile -t lines <<<"$errs"
		printf "  $2: %s\n" "${lines[@]}" >&2
		ERRS+="$name round $round $2: ${errs//$'\n'/; }"$'\n'
	fi
	RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
	reqs=$(awk '/requests in/ { print $1 }' "$out")
	FUS='' AUS=''
	if [[ -z $RPS ]]; then
		echo "  $2: wrk gave no result:" >&2
		sed 's/^/  | /' "$out" | tail -5 >&2
	elif ((reqs > 0)); then
		FUS=$(awk -v t=$((f1 - f0)) -v hz="$clk_tck" -v n="$reqs" 'BEGIN { printf "%.1f", 1e6 * t / hz / n }')
		AUS=$(awk -v t=$((a1 - a0)) -v hz="$clk_tck" -v n="$reqs" 'BEGIN { printf "%.1f", 1e6 * t / hz / n }')
	fi
}

# nginx_conf DIR PORT P1 P2: writes DIR/nginx.conf, everything (pid, error
# log, temp files) inside DIR.
nginx_conf() {
	local dir=$1 port=$2 p1=$3 p2=$4 kind temps=
	mkdir -p "$dir/tmp"
	# A *_temp_path for every module built in (nginx -V names their paths),
	# so that nothing is created under /var/lib/nginx.
	for kind in client-body proxy fastcgi uwsgi scgi; do
		if nginx -V 2>&1 | grep -q -- "--http-$kind-temp-path"; then
			temps+="	${kind//-/_}_temp_path $dir/tmp/$kind;"$'\n'
		fi
	done
	local pool="" http11=""
	if ((NGINX_KEEPALIVE > 0)); then
		pool="		keepalive $NGINX_KEEPALIVE;"
		http11="			proxy_http_version 1.1;
			proxy_set_header Connection \"\";"
	fi
	cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes $NGINX_WORKERS;
pid $dir/nginx.pid;
error_log $dir/error.log;
events {
	worker_connections 1024;
}
http {
	access_log off;
$temps	upstream app {
		server 127.0.0.1:$p1;
		server 127.0.0.1:$p2;
$pool
	}
	server {
		listen 127.0.0.1:$port;
		location / {
			proxy_pass http://app;
$http11
		}
	}
}
EOF
}

# scenario_ports NAME PORT: sets PORTS, the ports the scenario listens on
# (which must be free before and after).
scenario_ports() {
	PORTS=("$2")
	[[ $1 == nginx-rr ]] && PORTS+=($((BASE_PORT + 50)) $((BASE_PORT + 51)))
	return 0
}

# start NAME PORT: starts the scenario in its own process group; sets PID,
# cur (its tag) and WANT (how many distinct workers should answer).
start() {
	local name=$1 port=$2 dir=$tmp/$1
	local -a cmd
	WANT=$WORKERS
	scenario_ports "$name" "$port"
	mkdir -p "$dir"
	case $name in
	node-cluster-rr)
		cmd=(env PORT="$port" WORKERS="$WORKERS" SCHED=rr node bench/node-cluster.js)
		;;
	herd-round-robin | herd-least-conn)
		cmd=("$tmp/herd" run -w "$WORKERS" -l "127.0.0.1:$port" --balance "${name#herd-}"
			--control "$tmp/$name.sock" -- node examples/node/handoff.js)
		;;
	herd-proxy)
		cmd=("$tmp/herd" run -w "$WORKERS" -l "127.0.0.1:$port" --balance proxy
			--control "$tmp/$name.sock" -- node examples/node/port.js)
		;;
	nginx-rr)
		nginx_conf "$dir" "$port" "${PORTS[1]}" "${PORTS[2]}"
		# A shell that starts the two Node servers, waits until both
		# accept (a 502 during start-up would make nginx skip that server
		# for 10 s), starts nginx in the foreground, and forwards SIGTERM.
		# shellcheck disable=SC2016 # expanded by the inner shell
		cmd=(bash -c '
			dir=$1 pids=()
			PORT=$2 node examples/node/port.js & pids+=($!)
			PORT=$3 node examples/node/port.js & pids+=($!)
			trap "kill -TERM \${pids[*]}; exit 1" TERM
			for p in "$2" "$3"; do
				for ((i = 0; i < 100; i++)); do
					(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue 2
					sleep 0.05
				done
				echo "port.js on port $p did not start" >&2
				kill -TERM "${pids[@]}"
				exit 1
			done
			nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" & pids+=($!)
			trap "kill -TERM ${pids[*]}" TERM
			wait; wait' nginx-rr "$dir" "${PORTS[1]}" "${PORTS[2]}")
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

# find_procs NAME: sets FRONT (the processes that accept client
# connections) and APP (the Node processes that serve the requests).
find_procs() {
	local p master
	FRONT=() APP=()
	case $1 in
	nginx-rr)
		master=$(cat "$tmp/$1/nginx.pid" 2>/dev/null) || true
		if [[ -n $master ]]; then
			mapfile -t FRONT < <(echo "$master" && children "$master")
		fi
		;;
	*) FRONT=("$PID") ;;
	esac
	for p in $(tagged_pids "$cur"); do
		[[ $(cat "/proc/$p/comm" 2>/dev/null) == node && " ${FRONT[*]} " != *" $p "* ]] && APP+=("$p")
	done
	return 0
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
if $need_nginx; then
	nw=$NGINX_WORKERS
	[[ $nw == auto ]] && nw="auto ($(nproc))"
	echo "nginx:   $(nginx -v 2>&1 | sed "s/^nginx version: //"), worker_processes $nw, upstream keepalive $NGINX_KEEPALIVE"
fi
echo "wrk:     $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }') -t$THREADS -c$CONNS -d${DURATION}s, $WORKERS workers per scenario, median of $ROUNDS rounds"
echo '```'

# KA/CL (req/s), KAF/CLF/KAA/CLA (front/app CPU s), KAU/CLU/KAV/CLV
# (front/app us/req) hold one value per round, space-separated.
declare -A KA=() CL=() KAF=() CLF=() KAA=() CLA=() KAU=() CLU=() KAV=() CLV=()
ERRS=
failed=0
for ((round = 1; round <= ROUNDS; round++)); do
	i=0
	for name in "${SCENARIOS[@]}"; do
		port=$((BASE_PORT + i))
		i=$((i + 1))
		selected "$name" || continue
		echo "== round $round/$ROUNDS: $name (port $port)" >&2
		scenario_ports "$name" "$port"
		busy=
		for p in "${PORTS[@]}"; do
			if listening "$p"; then busy+=" $p"; fi
		done
		if [[ -n $busy ]]; then
			echo "  port(s)$busy already in use, skipping" >&2
			failed=1
			continue
		fi
		start "$name" "$port"
		if ! wait_ready "$port" "$PID" "$WANT"; then
			sed 's/^/  | /' "$tmp/$name.log" | tail -20 >&2
			[[ -f $tmp/$name/error.log ]] && sed 's/^/  | /' "$tmp/$name/error.log" | tail -20 >&2
			stop "$PID" "$cur" "${PORTS[@]}"
			failed=1
			continue
		fi
		find_procs "$name"
		bench "$port" keepalive
		KA[$name]+="$RPS " KAF[$name]+="$FCPU " KAA[$name]+="$ACPU " KAU[$name]+="$FUS " KAV[$name]+="$AUS "
		ka=$RPS kaf=$FCPU
		bench "$port" close
		CL[$name]+="$RPS " CLF[$name]+="$FCPU " CLA[$name]+="$ACPU " CLU[$name]+="$FUS " CLV[$name]+="$AUS "
		[[ -n $ka && -n $RPS ]] || failed=1
		echo "  keep-alive ${ka:-?} req/s (front ${kaf} CPU s), close ${RPS:-?} req/s (front ${FCPU} CPU s)" >&2
		stop "$PID" "$cur" "${PORTS[@]}"
		# herd's warnings and errors, a Node primary's "worker died", nginx's
		# error log (what the run and the stop left there)
		if grep -qE 'level=(WARN|ERROR)|died|Error' "$tmp/$name.log"; then
			echo "  from the scenario's log:" >&2
			grep -E 'level=(WARN|ERROR)|died|Error' "$tmp/$name.log" | tail -5 | sed 's/^/  | /' >&2
		fi
		if [[ -s $tmp/$name/error.log ]] && grep -qv '\[notice\]' "$tmp/$name/error.log"; then
			echo "  nginx error.log:" >&2
			grep -v '\[notice\]' "$tmp/$name/error.log" | tail -5 | sed 's/^/  | /' >&2
		fi
		rm -f "$tmp/$name/error.log"
	done
done

echo
rps_table

echo
echo "| ratio (median of per-round ratios) | keep-alive | close | target (keep-alive, close) |"
echo "| --- | ---: | ---: | --- |"
row() { # row A B TARGET, when both A and B ran
	selected "$1" && selected "$2" || return 0
	echo "| $1 / $2 | $(paired "${KA[$1]:-}" "${KA[$2]:-}") | $(paired "${CL[$1]:-}" "${CL[$2]:-}") | $3 |"
}
row herd-round-robin node-cluster-rr '>= 100%, >= 150%'
row herd-proxy nginx-rr '>= 90%, >= 90%'
row herd-least-conn node-cluster-rr 'informational'
row herd-least-conn herd-round-robin 'informational'

echo
echo "CPU seconds used during one ${DURATION} s run, with the microseconds of CPU per"
echo "request in parentheses (medians over the rounds). Front: the herd primary, the"
echo "Node cluster primary, nginx master + worker(s); app: the Node processes serving"
echo "the requests."
echo
echo "| scenario | front, keep-alive | front, close | app, keep-alive | app, close |"
echo "| --- | ---: | ---: | ---: | ---: |"
cpucell() { # cpucell SECONDS_VALUES US_VALUES: "median s (median us)", or n/a
	local t u
	# shellcheck disable=SC2086
	t=$(median $1) u=$(median $2)
	echo "${t:-n/a}${u:+ ($u)}"
}
for name in "${SCENARIOS[@]}"; do
	selected "$name" || continue
	echo "| $name | $(cpucell "${KAF[$name]:-}" "${KAU[$name]:-}") | $(cpucell "${CLF[$name]:-}" "${CLU[$name]:-}") |" \
		"$(cpucell "${KAA[$name]:-}" "${KAV[$name]:-}") | $(cpucell "${CLA[$name]:-}" "${CLV[$name]:-}") |"
done

if [[ -n $ERRS ]]; then
	echo
	echo "wrk reported errors:"
	echo
	printf '%s' "$ERRS" | sed 's/^/- /'
fi
exit "$failed"
