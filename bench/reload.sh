#!/usr/bin/env bash
# Zero-downtime benchmark: rolling reloads and kill -9 recovery, herd beside
# PM2's cluster mode and a Node cluster primary.
#
#   bash bench/reload.sh               # from the repo root; ~3 min at the defaults
#
# Every scenario runs the same app, examples/node/hello.js (it drains on
# SIGTERM/SIGINT: stops accepting, answers further requests with
# "Connection: close", closes idle connections after 1 s), with 2 workers:
#
#   herd          herd run -w 2 -l 127.0.0.1:PORT (reuseport), `herd reload`
#   herd-b        the same with the herd binary HERD_B (only when HERD_B is
#                 set): an A/B of two builds of herd in one run
#   pm2-cluster   pm2 start hello.js -i 2 (PM2 7, cluster mode: Node's cluster
#                 module, round-robin), `pm2 reload`
#   node-cluster  bench/node-cluster-reload.js (cluster.SCHED_RR), whose
#                 primary does a rolling restart on SIGHUP
#
# and measures in two phases:
#
# 1. Reloads under load, one scenario after the other (each started alone,
#    tested, stopped): wrk -t2 -c32 (keep-alive) for DURATION seconds;
#    1 s in, RELOADS rolling reloads of both workers, back to back (each
#    waits for the previous one to finish). Failed requests = wrk's socket
#    errors (connect, read, write, timeout) + non-2xx answers, over the
#    whole run; the target is 0.
# 2. The time of one reload (median over the RELOADS, with the range):
#    herd: how long `herd reload` takes (it returns once every new worker is
#    ready and every old one has been told to stop); PM2: how long
#    `pm2 reload` takes (a Node CLI that talks to the daemon); Node: from
#    SIGHUP to the primary's "reloaded in N ms" (the last old worker has
#    exited), as the primary measures it.
# 3. kill -9 -> a replacement serving, with the cluster idle, all the
#    scenarios side by side: they are all started (each on its own port)
#    and killed in interleaved rounds, so that the drift of the machine
#    over minutes hits them alike. Round k kills one worker of each
#    scenario; the order of a round is the scenarios' order rotated by k-1
#    (no scenario is always first), but the wait for KILL_UPTIME overlaps:
#    the next kill goes to the first scenario of that order whose victim is
#    ready, else the script waits for the soonest one. bench/kill-poll.js
#    SIGKILLs the oldest worker and polls the port with a new connection
#    every millisecond (a fixed rate, the same load on every scenario)
#    until a pid that is neither the killed worker nor the survivor answers
#    (median over KILLS, with the range). It also counts, during that gap,
#    connections refused, reset, or left hanging (no answer within 1 s):
#    the target is 0 of each. Before each kill the cluster is back to 2
#    workers, the machine has been idle for a second (no kill-poll.js, nor
#    a poll of some scenario's workers, in the last second), and the victim
#    has run for KILL_UPTIME seconds, the same rule for every scenario: this
#    measures the replacement after one crash. (herd takes a second exit of
#    a slot whose worker ran less than 10 s for a crash loop: it waits
#    100 ms or more before the restart and keeps new connections away from
#    the new worker for its first second, which turns ~0.2 s into ~1.2 s.)
#
# Then the ratios of the medians: herd reload time / PM2 reload time
# (target <= 0.5) and herd kill -9 time / Node cluster kill -9 time (target
# <= 1.0), the latter also as the median of the per-round ratios (round k's
# herd kill over round k's Node cluster kill), which cancels most of the
# drift; with HERD_B, the same for herd / herd-b. Progress goes to stderr,
# the report (markdown) to stdout.
#
# Environment knobs:
#   DURATION=20      seconds of wrk load around the reloads (must cover them:
#                    PM2 takes 2-3 s per reload on 2 cores)
#   RELOADS=5        reloads per scenario
#   KILLS=10         kill -9s per scenario (rounds of the kill phase)
#   KILL_UPTIME=11   seconds a worker has run before it is killed (0: no wait)
#   BASE_PORT=18100  herd, pm2-cluster, node-cluster and herd-b listen on
#                    BASE_PORT+0, +1, +2 and +3
#   HERD=PATH        use this herd binary instead of building ./cmd/herd
#   HERD_B=PATH      also run the scenario herd-b with this herd binary, in
#                    both phases, exactly like herd (its own port, control
#                    socket and --name), and report herd / herd-b
#   PM2=PATH         use this pm2 (7.x) instead of installing pm2@7 from npm
#                    into the scratch folder
#   ONLY=REGEX       run only the scenarios whose name matches the extended
#                    regex, e.g. ONLY=herd (herd and herd-b), ONLY='herd|node',
#                    ONLY='^herd$'
#
# Needs go, node, npm, curl and wrk; wrk and curl are installed with apt-get
# when missing (run as root). PM2 runs with PM2_HOME in the scratch folder
# and is killed (`pm2 kill`) at the end of each phase; whatever is still
# running is killed on exit or interrupt. Exits non-zero if a scenario could
# not run (start, a reload command, a replacement that never answered).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh
MEDIAN_FORMAT=%.1f # milliseconds

DURATION=${DURATION:-20}
RELOADS=${RELOADS:-5}
KILLS=${KILLS:-10}
KILL_UPTIME=${KILL_UPTIME:-11}
BASE_PORT=${BASE_PORT:-18100}
HERD_B=${HERD_B:-}
ONLY=${ONLY:-}
THREADS=2
CONNS=32
WORKERS=2
PM2_APP=reload-bench

SCENARIOS=(herd)
[[ -z $HERD_B ]] || SCENARIOS+=(herd-b)
SCENARIOS+=(pm2-cluster node-cluster)
declare -A PORT=(
	[herd]=$BASE_PORT
	[pm2-cluster]=$((BASE_PORT + 1))
	[node-cluster]=$((BASE_PORT + 2))
	[herd-b]=$((BASE_PORT + 3))
)

# on NAME: true if the scenario is in this run (herd-b needs HERD_B).
on() { [[ " ${SCENARIOS[*]} " == *" $1 "* ]] && selected "$1"; }

# --- tools -----------------------------------------------------------------
need wrk curl

tmp=$(mktemp -d)
# The running scenarios: TAG[NAME] is the HERD_BENCH_TAG of its processes,
# MAIN[NAME] its main process (herd, the Node primary or the PM2 daemon).
declare -A TAG=() MAIN=()
wrk_pid=         # wrk currently running
pm2_live=false   # a PM2 daemon may be running
export PM2_HOME="$tmp/pm2-home"
# shellcheck disable=SC2317 # invoked by trap
cleanup() {
	local name
	[[ -z $wrk_pid ]] || kill "$wrk_pid" 2>/dev/null || true
	if $pm2_live; then timeout 20 "$PM2" kill >/dev/null 2>&1 || true; fi
	for name in "${!TAG[@]}"; do
		[[ -z ${MAIN[$name]:-} ]] || kill -KILL "${MAIN[$name]}" 2>/dev/null || true
		kill_tagged "${TAG[$name]}" KILL
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

failed=0

if [[ -n ${HERD:-} ]]; then
	cp "$HERD" "$tmp/herd"
elif on herd; then
	go build -o "$tmp/herd" ./cmd/herd
fi
if on herd-b; then
	cp "$HERD_B" "$tmp/herd-b" || { echo "HERD_B=$HERD_B: cannot copy" >&2; exit 1; }
fi

pm2_version=-
if on pm2-cluster; then
	if [[ -n ${PM2:-} ]]; then
		PM2=$(command -v "$PM2") || { echo "PM2=$PM2: not found" >&2; exit 1; }
	else
		echo "installing pm2@7 into the scratch folder" >&2
		if npm install --prefix "$tmp/pm2" --no-audit --no-fund --loglevel=error pm2@7 >"$tmp/npm.log" 2>&1; then
			PM2="$tmp/pm2/node_modules/.bin/pm2"
		else
			echo "  npm install pm2@7 failed:" >&2
			sed 's/^/  | /' "$tmp/npm.log" | tail -5 >&2
			PM2=
		fi
	fi
	if [[ -n $PM2 ]]; then
		# Read the version from package.json: `pm2 --version` starts a daemon.
		pm2_version=$(node -p 'require(process.argv[1]).version' \
			"$(dirname "$(readlink -f "$PM2")")/../package.json" 2>/dev/null) || pm2_version=unknown
	fi
fi

# --- helpers ---------------------------------------------------------------

pm2cmd() { HERD_BENCH_TAG=${TAG[pm2-cluster]:-$tmp/pm2-cluster} "$PM2" "$@"; }

# now_us: sets NOW to the time in microseconds (no fork).
now_us() { NOW=${EPOCHREALTIME/[.,]/}; }

# ms_since T0: sets MS to the milliseconds since T0 (microseconds), 1 decimal.
ms_since() {
	local d
	now_us
	d=$((NOW - $1))
	printf -v MS '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}

clk_tck=$(getconf CLK_TCK)

# now_cs: sets CS to the time since boot in hundredths of a second (the
# clock of the start times in /proc/PID/stat; no fork).
now_cs() {
	local up
	read -r up _ </proc/uptime
	CS=$((10#${up/./}))
}

# birth_cs PID: when PID started, in hundredths of a second since boot.
birth_cs() {
	local stat
	local -a f
	stat=$(<"/proc/$1/stat") 2>/dev/null || return 1
	read -ra f <<<"${stat##*) }" # fields from the 3rd on; starttime is the 22nd
	echo $((f[19] * 100 / clk_tck))
}

# sleep_cs N: sleep N hundredths of a second (nothing if N <= 0).
sleep_cs() {
	(($1 > 0)) || return 0
	sleep "$(($1 / 100)).$(printf '%02d' $(($1 % 100)))"
}

# json_pids herd|pm2: the pids of the running, ready workers in `herd status
# --json` or `pm2 jlist` output on stdin.
json_pids() {
	node -e '
		const kind = process.argv[1];
		let s = "";
		process.stdin.on("data", (d) => (s += d)).on("end", () => {
			if (kind === "herd") {
				for (const w of JSON.parse(s).workers ?? [])
					if (w.state === "ready" && w.ready && w.pid > 0) console.log(w.pid);
			} else {
				const line = s.split("\n").reverse().find((l) => /^\[(\{|\])/.test(l.trim()));
				for (const p of JSON.parse(line ?? "[]"))
					if (p.pm2_env?.status === "online" && p.pid > 0) console.log(p.pid);
			}
		});' "$1"
}

# worker_pids NAME: the scenario's running workers, one pid a line.
worker_pids() {
	local p
	case $1 in
	herd | herd-b) "$tmp/$1" status --control "$tmp/$1.sock" --json 2>/dev/null | json_pids herd ;;
	pm2-cluster) pm2cmd jlist 2>/dev/null | json_pids pm2 ;;
	node-cluster)
		# The primary's children (its workers), not the zombies.
		# shellcheck disable=SC2013 # pids are words
		for p in $(cat /proc/"${MAIN[$1]}"/task/*/children 2>/dev/null); do
			alive "$p" && echo "$p"
		done
		;;
	esac
}

# back NAME [GONE]: true if the scenario has WORKERS running workers, none
# of them GONE; sets PIDS.
back() {
	mapfile -t PIDS < <(worker_pids "$1")
	((${#PIDS[@]} == WORKERS)) && [[ " ${PIDS[*]} " != *" ${2:-x} "* ]]
}

# wait_workers NAME [GONE]: wait (15 s at most) until back NAME [GONE].
wait_workers() {
	local deadline=$((SECONDS + 15))
	until back "$@"; do
		if ((SECONDS >= deadline)); then
			echo "  $1: not back to $WORKERS workers within 15 s (have: ${PIDS[*]:-none})" >&2
			return 1
		fi
		sleep 0.1
	done
}

# start NAME: starts the scenario on PORT[NAME]; sets TAG[NAME] and
# MAIN[NAME]. Returns 1 if it could not be started.
start() {
	local name=$1 port=${PORT[$1]} tag="$tmp/$1"
	TAG[$name]=$tag
	case $name in
	herd | herd-b)
		set -m # job control only for this job: it gets a process group of its own
		HERD_BENCH_TAG=$tag "$tmp/$name" run -w "$WORKERS" -l "127.0.0.1:$port" \
			--name "reload-bench${name#herd}" --control "$tmp/$name.sock" -- node examples/node/hello.js \
			</dev/null >"$tmp/$name.log" 2>&1 &
		MAIN[$name]=$!
		set +m
		;;
	node-cluster)
		set -m
		HERD_BENCH_TAG=$tag PORT=$port WORKERS=$WORKERS node bench/node-cluster-reload.js \
			</dev/null >"$tmp/$name.log" 2>&1 &
		MAIN[$name]=$!
		set +m
		;;
	pm2-cluster)
		pm2_live=true
		if ! PORT=$port pm2cmd start examples/node/hello.js -i "$WORKERS" --name "$PM2_APP" \
			</dev/null >"$tmp/$name.log" 2>&1; then
			echo "  pm2 start failed" >&2
			return 1
		fi
		MAIN[$name]=$(<"$PM2_HOME/pm2.pid") || return 1
		;;
	esac
}

# stop NAME: stop the scenario gracefully (10 s at most), then make sure
# nothing of it is left and its port is free.
stop() {
	local name=$1
	[[ -n ${TAG[$name]:-} ]] || return 0
	if [[ $name == pm2-cluster ]]; then
		timeout 30 "$PM2" kill >>"$tmp/$name.log" 2>&1 || echo "  warning: pm2 kill failed" >&2
		pm2_live=false
		sweep "${TAG[$name]}" # the PM2 daemon is not our child, nor a group of ours
	else
		end_main "${MAIN[$name]}"
		sweep "${TAG[$name]}" "${MAIN[$name]}"
	fi
	unset "TAG[$name]" "MAIN[$name]"
	port_free "${PORT[$name]}"
}

# stop_all: stop every scenario still running.
stop_all() {
	local name
	for name in "${SCENARIOS[@]}"; do stop "$name"; done
}

# up NAME: check the port, start the scenario and wait until it serves with
# WORKERS workers. Returns 1 (and sets failed) if it could not.
up() {
	local name=$1 port=${PORT[$1]}
	echo "== $name (port $port)" >&2
	if [[ $name == pm2-cluster && -z ${PM2:-} ]]; then
		echo "  no pm2, skipping" >&2
		failed=1
		return 1
	fi
	if listening "$port"; then
		echo "  port $port is already in use, skipping" >&2
		failed=1
		return 1
	fi
	if ! start "$name" || ! wait_ready "$port" "${MAIN[$name]}" "$WORKERS" 15 || ! wait_workers "$name"; then
		sed 's/^/  | /' "$tmp/$name.log" | tail -20 >&2
		failed=1
		stop "$name"
		return 1
	fi
}

# reload NAME: one rolling reload of every worker; sets MS to its duration.
# Returns 1 if it failed.
reload() {
	local name=$1 t0 before line deadline
	case $name in
	herd | herd-b | pm2-cluster)
		now_us
		t0=$NOW
		if [[ $name == herd* ]]; then
			"$tmp/$name" reload --control "$tmp/$name.sock" >"$tmp/reload.out" 2>&1 || {
				sed 's/^/  | /' "$tmp/reload.out" >&2
				return 1
			}
		else
			pm2cmd reload "$PM2_APP" >"$tmp/reload.out" 2>&1 || {
				sed 's/^/  | /' "$tmp/reload.out" | tail -5 >&2
				return 1
			}
		fi
		ms_since "$t0"
		;;
	node-cluster)
		before=$(grep -c -e '^reloaded in ' -e '^reload failed' "$tmp/$name.log" || true)
		kill -HUP "${MAIN[$name]}"
		deadline=$((SECONDS + 60))
		until (($(grep -c -e '^reloaded in ' -e '^reload failed' "$tmp/$name.log" || true) > before)); do
			if ((SECONDS >= deadline)); then
				echo "  no \"reloaded\" line within 60 s" >&2
				return 1
			fi
			sleep 0.02
		done
		line=$(grep -e '^reloaded in ' -e '^reload failed' "$tmp/$name.log" | tail -1)
		if [[ $line != "reloaded in "* ]]; then
			echo "  $line" >&2
			return 1
		fi
		MS=${line#reloaded in }
		MS=${MS% ms}
		;;
	esac
}

# wrk_field OUT NAME: one figure of a wrk report (0 if absent).
wrk_field() {
	awk -v f="$2" '
		/Socket errors:/ { gsub(",", ""); for (i = 3; i < NF; i += 2) e[$i] = $(i + 1) }
		/Non-2xx or 3xx responses:/ { e["non2xx"] = $NF }
		/ requests in / { e["requests"] = $1 }
		END { print e[f] + 0 }' "$1"
}

# reload_test NAME: wrk for DURATION s with RELOADS reloads 1 s in.
reload_test() {
	local name=$1 out="$tmp/wrk.out" r times="" f k n
	wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:${PORT[$name]}/" >"$out" 2>&1 &
	wrk_pid=$!
	sleep 1
	for ((r = 1; r <= RELOADS; r++)); do
		if ! reload "$name"; then
			echo "  reload $r failed" >&2
			failed=1
			break
		fi
		RT[$name]+="$MS "
		times+=" $MS"
	done
	if ! kill -0 "$wrk_pid" 2>/dev/null; then
		echo "  warning: the reloads outlasted wrk; raise DURATION" >&2
	fi
	wait "$wrk_pid" || true
	wrk_pid=
	if ! grep -q ' requests in ' "$out"; then
		echo "  wrk gave no result:" >&2
		sed 's/^/  | /' "$out" | tail -5 >&2
		failed=1
		return
	fi
	f=0
	for k in connect read write timeout non2xx; do
		n=$(wrk_field "$out" "$k")
		E[$name.$k]=$n
		f=$((f + n))
	done
	E[$name.requests]=$(wrk_field "$out" requests)
	FAILED[$name]=$f
	echo "  reload ms:$times; failed requests $f of ${E[$name.requests]}" >&2
}

# The kill phase's state of each scenario: its last victim (GONE), the
# deadline (in CS) for it to be back to WORKERS workers after a kill, and,
# once it is back, the start time (in CS) of its oldest worker (BIRTH;
# empty while it is not back). IDLE_FROM: the end (in CS) of the last
# kill-poll.js or poll of a scenario's workers; the next kill waits for a
# second after it.
declare -A GONE=() DEADLINE=() BIRTH=()
IDLE_FROM=0

# minus ARRAY NAME: take NAME out of the array variable ARRAY.
minus() {
	local -n arr=$1
	local n
	local -a keep=()
	for n in "${arr[@]}"; do [[ $n == "$2" ]] || keep+=("$n"); done
	arr=("${keep[@]}")
}

# drop NAME: take the scenario out of the kill phase (it failed).
drop() {
	minus kill_active "$1"
	minus kill_left "$1"
	failed=1
}

# oldest NAME: from PIDS (WORKERS of them), sets VICTIM (the worker that
# has run longest), SURVIVOR and VBIRTH (the victim's start, in CS).
# Returns 1 if a worker vanished.
oldest() {
	local b0 b1
	if ! b0=$(birth_cs "${PIDS[0]}") || ! b1=$(birth_cs "${PIDS[1]}") || ! alive "${PIDS[0]}" || ! alive "${PIDS[1]}"; then
		return 1
	fi
	if ((b0 <= b1)); then
		VICTIM=${PIDS[0]} SURVIVOR=${PIDS[1]} VBIRTH=$b0
	else
		VICTIM=${PIDS[1]} SURVIVOR=${PIDS[0]} VBIRTH=$b1
	fi
}

# kill_one NAME ROUND: the final check (back to WORKERS workers, the victim
# old enough) and the kill. Returns 1 if the scenario is not ready after
# all (BIRTH updated or cleared: pick again), 2 if it failed.
kill_one() {
	local name=$1 k=$2 line kv
	local -A res=()
	if ! back "$name" "${GONE[$name]}" || ! oldest; then
		# Not back after all: poll it again, for 15 s at most.
		BIRTH[$name]=''
		now_cs
		DEADLINE[$name]=$((CS + 1500))
		return 1
	fi
	now_cs
	if ((CS - VBIRTH < KILL_UPTIME * 100)); then
		BIRTH[$name]=$VBIRTH # another victim than planned: wait for it
		return 1
	fi
	line=$(node bench/kill-poll.js "${PORT[$name]}" "$VICTIM" "$SURVIVOR") || {
		now_cs
		IDLE_FROM=$CS
		echo "  $name kill $k: ${line:-kill-poll.js failed}" >&2
		return 2
	}
	now_cs
	IDLE_FROM=$CS
	GONE[$name]=$VICTIM
	BIRTH[$name]=''
	DEADLINE[$name]=$((CS + 1500))
	for kv in $line; do res[${kv%%=*}]=${kv#*=}; done
	KT[$name]+="${res[ms]} "
	for kv in refused reset hung; do KE[$name.$kv]=$((${KE[$name.$kv]:-0} + ${res[$kv]:-0})); done
	echo "  $name kill $k: $line" >&2
}

# kill_phase: start every selected scenario, then KILLS interleaved rounds
# of kill -9s (see the header), then stop them.
kill_phase() {
	local name k i n pick soon t wait_more rc
	local -a order
	kill_active=()
	for name in "${SCENARIOS[@]}"; do
		selected "$name" || continue
		up "$name" || continue
		kill_active+=("$name")
	done
	now_cs
	for name in "${kill_active[@]}"; do
		GONE[$name]=''
		BIRTH[$name]=''
		DEADLINE[$name]=$((CS + 1500))
	done
	echo "== kill -9, interleaved: ${kill_active[*]:-nothing}" >&2
	for ((k = 1; k <= KILLS && ${#kill_active[@]} > 0; k++)); do
		n=${#kill_active[@]}
		order=()
		for ((i = 0; i < n; i++)); do order+=("${kill_active[(i + k - 1) % n]}"); done
		kill_left=("${order[@]}")
		echo "  round $k, in the order: ${order[*]}" >&2
		while ((${#kill_left[@]} > 0)); do
			# Poll the scenarios not back yet since their last kill.
			wait_more=false
			for name in "${kill_left[@]}"; do
				[[ -z ${BIRTH[$name]} ]] || continue
				if back "$name" "${GONE[$name]}" && oldest; then
					BIRTH[$name]=$VBIRTH
				else
					now_cs
					if ((CS >= DEADLINE[$name])); then
						echo "  $name: not back to $WORKERS workers within 15 s (have: ${PIDS[*]:-none})" >&2
						drop "$name"
						continue
					fi
					wait_more=true
				fi
				now_cs
				IDLE_FROM=$CS
			done
			# The first one in this round's order that may be killed now,
			# else the soonest.
			now_cs
			pick="" soon=""
			for name in "${kill_left[@]}"; do
				[[ -n ${BIRTH[$name]} ]] || continue
				t=$((BIRTH[$name] + KILL_UPTIME * 100))
				((t >= IDLE_FROM + 100)) || t=$((IDLE_FROM + 100))
				if ((t <= CS)); then
					pick=$name
					break
				fi
				[[ -n $soon && $soon -le $t ]] || soon=$t
			done
			if [[ -z $pick ]]; then
				((${#kill_left[@]} > 0)) || break
				if $wait_more; then
					sleep 0.1
				elif [[ -n $soon ]]; then
					sleep_cs $((soon - CS))
				fi
				continue
			fi
			rc=0
			kill_one "$pick" "$k" || rc=$?
			case $rc in
			0) minus kill_left "$pick" ;;
			2) drop "$pick" ;;
			esac
		done
	done
	for name in "${kill_active[@]}"; do
		wait_workers "$name" "${GONE[$name]}" || failed=1
	done
	stop_all
}

ratio() { # ratio A B: A/B, or n/a
	awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "n/a" }'
}
meets() { # meets RATIO TARGET: yes/no/n/a
	awk -v r="$1" -v t="$2" 'BEGIN { if (r == "n/a") print "n/a"; else print (r + 0 <= t + 0) ? "yes" : "no" }'
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
if on herd-b; then echo "herd-b:  $HERD_B"; fi
echo "pm2:     $pm2_version"
echo "wrk:     $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }') -t$THREADS -c$CONNS -d${DURATION}s keep-alive, $RELOADS reloads 1 s in"
echo "kills:   $KILLS per scenario in interleaved rounds, victim up >= ${KILL_UPTIME}s; $WORKERS workers per scenario"
echo '```'

# RT/KT hold the reload and kill -9 times (ms, space-separated, in order);
# FAILED the failed requests; E the wrk error counts; KE the kill -9 gap
# counts.
declare -A RT=() KT=() FAILED=() E=() KE=()
declare -a kill_active=() kill_left=()

# Phase 1: reloads, one scenario at a time.
for name in "${SCENARIOS[@]}"; do
	selected "$name" || continue
	up "$name" || continue
	reload_test "$name"
	stop "$name"
done

# Phase 2: kill -9s, all the scenarios side by side.
kill_phase

echo
echo "Rolling reloads of $WORKERS workers under load ($RELOADS back to back during wrk -c$CONNS -d${DURATION}s):"
echo
echo "| scenario | failed requests | of requests | connect / read / write / timeout / non-2xx | reload time, ms: median (range) |"
echo "| --- | ---: | ---: | --- | ---: |"
for name in "${SCENARIOS[@]}"; do
	selected "$name" || continue
	# shellcheck disable=SC2086 # split the values
	echo "| $name | ${FAILED[$name]:-n/a} | ${E[$name.requests]:-n/a} |" \
		"${E[$name.connect]:--} / ${E[$name.read]:--} / ${E[$name.write]:--} / ${E[$name.timeout]:--} / ${E[$name.non2xx]:--} |" \
		"$(cell ${RT[$name]:-}) |"
done

echo
echo "kill -9 of one worker, idle cluster: time until a new pid answers, and what the polling client saw meanwhile ($KILLS kills):"
echo
echo "| scenario | kill -9 -> new pid serving, ms: median (range) | refused | reset | hung |"
echo "| --- | ---: | ---: | ---: | ---: |"
for name in "${SCENARIOS[@]}"; do
	selected "$name" || continue
	# shellcheck disable=SC2086
	echo "| $name | $(cell ${KT[$name]:-}) | ${KE[$name.refused]:-n/a} | ${KE[$name.reset]:-n/a} | ${KE[$name.hung]:-n/a} |"
done
echo
echo "The kills were interleaved: all the scenarios ran side by side, and round k killed one worker of each (the order rotated each round, the wait for the victim's uptime overlapping), with 1 s idle before each kill."

# shellcheck disable=SC2086
r1=$(ratio "$(median ${RT[herd]:-})" "$(median ${RT[pm2-cluster]:-})")
# shellcheck disable=SC2086
r2=$(ratio "$(median ${KT[herd]:-})" "$(median ${KT[node-cluster]:-})")
p2=$(paired_ratio "${KT[herd]:-}" "${KT[node-cluster]:-}")
# shellcheck disable=SC2086
r3=$(ratio "$(median ${RT[herd]:-})" "$(median ${RT[node-cluster]:-})")
# shellcheck disable=SC2086
r4=$(ratio "$(median ${KT[herd]:-})" "$(median ${KT[pm2-cluster]:-})")
echo
echo "| ratio of medians | value | target | met |"
echo "| --- | ---: | ---: | --- |"
echo "| herd reload time / PM2 reload time | $r1 | <= 0.5 | $(meets "$r1" 0.5) |"
echo "| herd kill -9 time / Node cluster kill -9 time | $r2 | <= 1.0 | $(meets "$r2" 1.0) |"
echo "| herd kill -9 time / Node cluster kill -9 time: median of the per-round ratios | $p2 | <= 1.0 | $(meets "$p2" 1.0) |"
echo "| herd reload time / Node cluster reload time | $r3 | - | - |"
echo "| herd kill -9 time / PM2 kill -9 time | $r4 | - | - |"
if on herd-b; then
	# shellcheck disable=SC2086
	r5=$(ratio "$(median ${RT[herd]:-})" "$(median ${RT[herd-b]:-})")
	# shellcheck disable=SC2086
	r6=$(ratio "$(median ${KT[herd]:-})" "$(median ${KT[herd-b]:-})")
	p6=$(paired_ratio "${KT[herd]:-}" "${KT[herd-b]:-}")
	echo "| herd reload time / herd-b reload time | $r5 | - | - |"
	echo "| herd kill -9 time / herd-b kill -9 time | $r6 | - | - |"
	echo "| herd kill -9 time / herd-b kill -9 time: median of the per-round ratios | $p6 | - | - |"
fi
exit "$failed"
