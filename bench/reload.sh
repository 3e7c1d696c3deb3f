#!/usr/bin/env bash
# Zero-downtime benchmark: rolling reloads and kill -9 recovery, herd beside
# PM2's cluster mode and a Node cluster primary.
#
#   bash bench/reload.sh               # from the repo root; ~5 min at the defaults
#
# Every scenario runs the same app, examples/node/hello.js (it drains on
# SIGTERM/SIGINT: stops accepting, answers further requests with
# "Connection: close", closes idle connections after 1 s), with 2 workers:
#
#   herd          herd run -w 2 -l 127.0.0.1:PORT (reuseport), `herd reload`
#   pm2-cluster   pm2 start hello.js -i 2 (PM2 7, cluster mode: Node's cluster
#                 module, round-robin), `pm2 reload`
#   node-cluster  bench/node-cluster-reload.js (cluster.SCHED_RR), whose
#                 primary does a rolling restart on SIGHUP
#
# and measures, one scenario after the other:
#
# 1. Reloads under load: wrk -t2 -c32 (keep-alive) for DURATION seconds;
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
# 3. kill -9 -> a replacement serving, with the cluster idle: bench/kill-poll.js
#    SIGKILLs the oldest worker and polls the port with a new connection
#    every millisecond (a fixed rate, the same load on every scenario)
#    until a pid that is neither the killed worker nor the survivor answers
#    (median over KILLS, with the range). It also counts, during that gap,
#    connections refused, reset, or left hanging (no answer within 1 s):
#    the target is 0 of each. Before each kill the cluster is back to 2
#    workers, has been idle for a second, and the victim has run for
#    KILL_UPTIME seconds, the same rule for every scenario: this measures
#    the replacement after one crash. (herd takes a second exit of a slot
#    whose worker ran less than 10 s for a crash loop: it waits 100 ms or
#    more before the restart and keeps new connections away from the new
#    worker for its first second, which turns ~0.2 s into ~1.2 s.)
#
# Then the ratios of the medians: herd reload time / PM2 reload time
# (target <= 0.5) and herd kill -9 time / Node cluster kill -9 time (target
# <= 1.0). Progress goes to stderr, the report (markdown) to stdout.
#
# Environment knobs:
#   DURATION=20      seconds of wrk load around the reloads (must cover them:
#                    PM2 takes 2-3 s per reload on 2 cores)
#   RELOADS=5        reloads per scenario
#   KILLS=10         kill -9s per scenario
#   KILL_UPTIME=11   seconds a worker has run before it is killed (0: no wait)
#   BASE_PORT=18100  scenario i listens on BASE_PORT+i
#   HERD=PATH        use this herd binary instead of building ./cmd/herd
#   PM2=PATH         use this pm2 (7.x) instead of installing pm2@7 from npm
#                    into the scratch folder
#   ONLY=REGEX       run only the scenarios whose name matches the extended
#                    regex, e.g. ONLY=herd, ONLY='herd|node'
#
# Needs go, node, npm, curl and wrk; wrk and curl are installed with apt-get
# when missing (run as root). PM2 runs with PM2_HOME in the scratch folder
# and is killed (`pm2 kill`) at the end. Exits non-zero if a scenario could
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
ONLY=${ONLY:-}
THREADS=2
CONNS=32
WORKERS=2
PM2_APP=reload-bench

SCENARIOS=(herd pm2-cluster node-cluster)

# --- tools -----------------------------------------------------------------
need wrk curl

tmp=$(mktemp -d)
cur=             # tag of the scenario currently running
wrk_pid=         # wrk currently running
pm2_live=false   # a PM2 daemon may be running
export PM2_HOME="$tmp/pm2-home"
# shellcheck disable=SC2317 # invoked by trap
cleanup() {
	[[ -n $wrk_pid ]] && kill "$wrk_pid" 2>/dev/null
	if $pm2_live; then timeout 20 "$PM2" kill >/dev/null 2>&1 || true; fi
	[[ -n $cur ]] && kill_tagged "$cur" KILL
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

failed=0

if [[ -n ${HERD:-} ]]; then
	cp "$HERD" "$tmp/herd"
elif selected herd; then
	go build -o "$tmp/herd" ./cmd/herd
fi

pm2_version=-
if selected pm2-cluster; then
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

pm2cmd() { HERD_BENCH_TAG=$cur "$PM2" "$@"; }

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

# uptime_cs PID: how long PID has run, in hundredths of a second.
uptime_cs() {
	local stat up
	local -a f
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	read -ra f <<<"${stat##*) }" # fields from the 3rd on; starttime is the 22nd
	read -r up _ </proc/uptime
	echo $((${up/./} - f[19] * 100 / clk_tck))
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
	herd) "$tmp/herd" status --control "$tmp/herd.sock" --json 2>/dev/null | json_pids herd ;;
	pm2-cluster) pm2cmd jlist 2>/dev/null | json_pids pm2 ;;
	node-cluster)
		# The primary's children (its workers), not the zombies.
		# shellcheck disable=SC2013 # pids are words
		for p in $(cat /proc/"$PID"/task/*/children 2>/dev/null); do
			alive "$p" && echo "$p"
		done
		;;
	esac
}

# wait_workers NAME [GONE]: wait (15 s at most) until the scenario has
# WORKERS running workers, none of them GONE; sets PIDS.
wait_workers() {
	local deadline=$((SECONDS + 15))
	while :; do
		mapfile -t PIDS < <(worker_pids "$1")
		if ((${#PIDS[@]} == WORKERS)) && [[ " ${PIDS[*]} " != *" ${2:-x} "* ]]; then
			return 0
		fi
		if ((SECONDS >= deadline)); then
			echo "  not back to $WORKERS workers within 15 s (have: ${PIDS[*]:-none})" >&2
			return 1
		fi
		sleep 0.1
	done
}

# start NAME PORT: starts the scenario; sets PID (herd, the Node primary or
# the PM2 daemon) and cur (its tag). Returns 1 if it could not be started.
start() {
	local name=$1 port=$2
	cur="$tmp/$name"
	case $name in
	herd)
		set -m # job control only for this job: it gets a process group of its own
		HERD_BENCH_TAG=$cur "$tmp/herd" run -w "$WORKERS" -l "127.0.0.1:$port" \
			--name reload-bench --control "$tmp/herd.sock" -- node examples/node/hello.js \
			</dev/null >"$tmp/$name.log" 2>&1 &
		PID=$!
		set +m
		;;
	node-cluster)
		set -m
		HERD_BENCH_TAG=$cur PORT=$port WORKERS=$WORKERS node bench/node-cluster-reload.js \
			</dev/null >"$tmp/$name.log" 2>&1 &
		PID=$!
		set +m
		;;
	pm2-cluster)
		pm2_live=true
		if ! PORT=$port pm2cmd start examples/node/hello.js -i "$WORKERS" --name "$PM2_APP" \
			</dev/null >"$tmp/$name.log" 2>&1; then
			echo "  pm2 start failed" >&2
			return 1
		fi
		PID=$(<"$PM2_HOME/pm2.pid") || return 1
		;;
	esac
}

# stop NAME PORT: stop the scenario gracefully (10 s at most), then make
# sure nothing of it is left and the port is free.
stop() {
	local name=$1 port=$2
	if [[ $name == pm2-cluster ]]; then
		timeout 30 "$PM2" kill >>"$tmp/$name.log" 2>&1 || echo "  warning: pm2 kill failed" >&2
		pm2_live=false
		sweep "$cur" # the PM2 daemon is not our child, nor a group of ours
	else
		end_main "$PID"
		sweep "$cur" "$PID"
	fi
	cur=
	port_free "$port"
}

# reload NAME: one rolling reload of every worker; sets MS to its duration.
# Returns 1 if it failed.
reload() {
	local name=$1 t0 before line deadline
	case $name in
	herd | pm2-cluster)
		now_us
		t0=$NOW
		if [[ $name == herd ]]; then
			"$tmp/herd" reload --control "$tmp/herd.sock" >"$tmp/reload.out" 2>&1 || {
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
		kill -HUP "$PID"
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

# reload_test NAME PORT: wrk for DURATION s with RELOADS reloads 1 s in.
reload_test() {
	local name=$1 port=$2 out="$tmp/wrk.out" r times="" f k n
	wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/" >"$out" 2>&1 &
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

# kill_test NAME PORT: KILLS times kill -9 the oldest worker and time its
# replacement.
kill_test() {
	local name=$1 port=$2 k victim="" survivor up up0 up1 wait_cs line kv
	local -A res
	for ((k = 1; k <= KILLS; k++)); do
		wait_workers "$name" "$victim" || { failed=1; return; }
		sleep 1 # idle
		mapfile -t PIDS < <(worker_pids "$name")
		((${#PIDS[@]} == WORKERS)) || { failed=1; return; }
		# The victim is the oldest worker.
		if ! up0=$(uptime_cs "${PIDS[0]}") || ! up1=$(uptime_cs "${PIDS[1]}"); then
			echo "  a worker vanished" >&2
			failed=1
			return
		fi
		if ((up0 >= up1)); then
			victim=${PIDS[0]} survivor=${PIDS[1]} up=$up0
		else
			victim=${PIDS[1]} survivor=${PIDS[0]} up=$up1
		fi
		wait_cs=$((KILL_UPTIME * 100 - up))
		if ((wait_cs > 0)); then
			sleep "$((wait_cs / 100)).$(printf '%02d' $((wait_cs % 100)))"
		fi
		if ! line=$(node bench/kill-poll.js "$port" "$victim" "$survivor"); then
			echo "  kill $k: ${line:-kill-poll.js failed}" >&2
			failed=1
			return
		fi
		res=()
		for kv in $line; do res[${kv%%=*}]=${kv#*=}; done
		KT[$name]+="${res[ms]} "
		for kv in refused reset hung; do KE[$name.$kv]=$((${KE[$name.$kv]:-0} + ${res[$kv]:-0})); done
		echo "  kill $k: $line" >&2
	done
	wait_workers "$name" "$victim" || failed=1
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
echo "pm2:     $pm2_version"
echo "wrk:     $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }') -t$THREADS -c$CONNS -d${DURATION}s keep-alive, $RELOADS reloads 1 s in"
echo "kills:   $KILLS per scenario, victim up >= ${KILL_UPTIME}s; $WORKERS workers per scenario"
echo '```'

# RT/KT hold the reload and kill -9 times (ms, space-separated); FAILED the
# failed requests; E the wrk error counts; KE the kill -9 gap counts.
declare -A RT=() KT=() FAILED=() E=() KE=()
i=0
for name in "${SCENARIOS[@]}"; do
	port=$((BASE_PORT + i))
	i=$((i + 1))
	selected "$name" || continue
	echo "== $name (port $port)" >&2
	if [[ $name == pm2-cluster && -z ${PM2:-} ]]; then
		echo "  no pm2, skipping" >&2
		failed=1
		continue
	fi
	if listening "$port"; then
		echo "  port $port is already in use, skipping" >&2
		failed=1
		continue
	fi
	if ! start "$name" "$port" || ! wait_ready "$port" "$PID" "$WORKERS" 15 || ! wait_workers "$name"; then
		sed 's/^/  | /' "$tmp/$name.log" | tail -20 >&2
		failed=1
		stop "$name" "$port"
		continue
	fi
	reload_test "$name" "$port"
	kill_test "$name" "$port"
	stop "$name" "$port"
done

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

# shellcheck disable=SC2086
r1=$(ratio "$(median ${RT[herd]:-})" "$(median ${RT[pm2-cluster]:-})")
# shellcheck disable=SC2086
r2=$(ratio "$(median ${KT[herd]:-})" "$(median ${KT[node-cluster]:-})")
# shellcheck disable=SC2086
r3=$(ratio "$(median ${RT[herd]:-})" "$(median ${RT[node-cluster]:-})")
# shellcheck disable=SC2086
r4=$(ratio "$(median ${KT[herd]:-})" "$(median ${KT[pm2-cluster]:-})")
echo
echo "| ratio of medians | value | target | met |"
echo "| --- | ---: | ---: | --- |"
echo "| herd reload time / PM2 reload time | $r1 | <= 0.5 | $(meets "$r1" 0.5) |"
echo "| herd kill -9 time / Node cluster kill -9 time | $r2 | <= 1.0 | $(meets "$r2" 1.0) |"
echo "| herd reload time / Node cluster reload time | $r3 | - | - |"
echo "| herd kill -9 time / PM2 kill -9 time | $r4 | - | - |"
exit "$failed"
