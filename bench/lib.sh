# shellcheck shell=bash
# Helpers shared by the load benchmarks (bench/http.sh, bench/balance.sh,
# bench/reload.sh): finding and stopping a scenario's processes, waiting for
# a port to answer, and the figures (median, range, per-round ratios).
# Sourced from the repository root.

# selected NAME: true if the scenario runs (ONLY is an extended regex).
selected() { [[ -z ${ONLY:-} || $1 =~ $ONLY ]]; }

# Each scenario runs with HERD_BENCH_TAG=TAG in its environment, and its main
# process in a process group of its own. Not with setsid: a new session is
# a new scheduler autogroup, which would split the CPU 50/50 between server
# and wrk instead of per thread (halving multi-threaded Go results on 2
# cores).
#
# tagged_pids TAG: the processes started with HERD_BENCH_TAG=TAG (this finds
# workers even if they moved to another process group or were orphaned).
tagged_pids() {
	grep -lsxzF "HERD_BENCH_TAG=$1" /proc/[0-9]*/environ |
		awk -F/ -v self=$$ '$3 != self { print $3 }' || true
}

kill_tagged() { # kill_tagged TAG SIGNAL
	local -a pids
	mapfile -t pids < <(tagged_pids "$1")
	((${#pids[@]} == 0)) || kill -"$2" "${pids[@]}" 2>/dev/null || true
}

# listening PORT: true if some socket listens on PORT (IPv4 or IPv6).
listening() {
	local hex
	hex=$(printf '%04X' "$1")
	awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { f = 1 } END { exit !f }' \
		/proc/net/tcp /proc/net/tcp6
}

alive() { # alive PID: running and not a zombie
	local state
	state=$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ $state != Z ]]
}

# wait_ready PORT PID WANT [SECONDS]: poll until the port answers (SECONDS,
# default 10, at most) and, for up to 3 s more, until WANT distinct worker
# pids have answered. The pid is the last word of the body in both "hello
# from worker N pid P" and "hello from port P pid N".
wait_ready() {
	local port=$1 pid=$2 want=$3 limit=${4:-10} body deadline
	local -A seen=()
	deadline=$((SECONDS + limit))
	until body=$(curl -sf --max-time 1 "http://127.0.0.1:$port/"); do
		if ! alive "$pid"; then
			echo "  process exited before answering" >&2
			return 1
		fi
		if ((SECONDS >= deadline)); then
			echo "  port $port did not answer within $limit s" >&2
			return 1
		fi
		sleep 0.1
	done
	seen[p${body##* pid }]=1
	deadline=$((SECONDS + 3))
	while ((${#seen[@]} < want && SECONDS < deadline)); do
		body=$(curl -sf --max-time 1 "http://127.0.0.1:$port/") && seen[p${body##* pid }]=1
	done
	if ((${#seen[@]} < want)); then
		echo "  warning: only ${#seen[@]} of $want workers answered" >&2
	fi
}

# run_wrk SECONDS OUTFILE [ARGS...]: wrk in the background, so that a
# signal to the script is handled at once rather than after wrk is done.
# Uses THREADS and CONNS; sets wrk_pid while it runs.
run_wrk() {
	local d=$1 out=$2
	shift 2
	wrk -t"$THREADS" -c"$CONNS" -d"${d}s" "$@" >"$out" 2>&1 &
	wrk_pid=$!
	wait "$wrk_pid" || true
	wrk_pid=
}

# median VALUES...: the median of the non-empty values, or nothing. The
# mean of the middle two is printed with MEDIAN_FORMAT (default %g).
median() {
	printf '%s\n' "$@" | awk 'NF' | sort -g | awk -v f="${MEDIAN_FORMAT:-%g}\n" '{ v[NR] = $1 } END {
		if (NR == 0) exit
		if (NR % 2) print v[(NR + 1) / 2]; else printf f, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

spread() { # spread VALUES...: "min-max", or nothing for fewer than two values
	printf '%s\n' "$@" | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END { if (NR > 1) printf "%s-%s", v[1], v[NR] }'
}

cell() { # cell VALUES...: "median (min-max)"
	local m r
	m=$(median "$@")
	r=$(spread "$@")
	echo "${m:-n/a}${r:+ ($r)}"
}

# paired_median VALUES_A VALUES_B: the median of the per-round ratios A/B
# (the i-th value of A over the i-th of B, as far as both go), or nothing.
# It cancels the drift between rounds that a ratio of medians keeps.
paired_median() {
	local -a a b ratios=()
	local i
	read -r -a a <<<"$1"
	read -r -a b <<<"$2"
	for ((i = 0; i < ${#a[@]} && i < ${#b[@]}; i++)); do
		ratios+=("$(awk -v x="${a[i]}" -v y="${b[i]}" 'BEGIN { if (x > 0 && y > 0) printf "%.4f", x / y }')")
	done
	MEDIAN_FORMAT=%.6f median "${ratios[@]}"
}

# paired VALUES_A VALUES_B: paired_median as a percentage, or n/a.
paired() {
	local m
	m=$(paired_median "$1" "$2")
	[[ -n $m ]] && awk -v r="$m" 'BEGIN { printf "%.1f%%", 100 * r }' || printf 'n/a'
}

# paired_ratio VALUES_A VALUES_B: paired_median as a plain ratio (2
# decimals), or n/a.
paired_ratio() {
	local m
	m=$(paired_median "$1" "$2")
	[[ -n $m ]] && awk -v r="$m" 'BEGIN { printf "%.2f", r }' || printf 'n/a'
}

# end_main PID: SIGTERM the scenario's main process (a child of this
# shell), SIGKILL it if it is still there after 10 s, and reap it.
end_main() {
	local pid=$1 i rc=0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < 100; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		echo "  warning: pid $pid ignored SIGTERM for 10 s, killing" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || rc=$?
	((rc == 0)) || echo "  note: main process exited with status $rc" >&2
}

# sweep TAG [PGID]: give what is left of scenario TAG (and of process group
# PGID) 3 s to be gone, then SIGKILL it. Uses group_pids when PGID is given
# and the script defines it.
sweep() {
	local tag=$1 pgid=${2:-} i left
	for ((i = 0; i < 30; i++)); do
		if [[ -n $pgid ]] && declare -F group_pids >/dev/null; then
			left=$( (tagged_pids "$tag" && group_pids "$pgid") | sort -u)
		else
			left=$(tagged_pids "$tag")
		fi
		[[ -z $left ]] && return 0
		sleep 0.1
	done
	echo "  warning: left behind after stop: ${left//$'\n'/ }; killing" >&2
	[[ -z $pgid ]] || kill -KILL -- -"$pgid" 2>/dev/null || true
	kill_tagged "$tag" KILL
}

# port_free PORT: wait up to 2 s for nothing to listen on PORT.
port_free() {
	local i
	for ((i = 0; i < 20; i++)); do
		listening "$1" || return 0
		sleep 0.1
	done
	echo "  warning: something still listens on port $1" >&2
}

# need COMMAND[=PACKAGE]...: install, with apt-get (as root), the Debian
# packages of the commands that are missing (PACKAGE defaults to COMMAND).
need() {
	local spec missing=()
	for spec; do
		command -v "${spec%%=*}" >/dev/null || missing+=("${spec#*=}")
	done
	((${#missing[@]})) || return 0
	echo "installing ${missing[*]}" >&2
	apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
}

# rps_table: the req/s table of the selected SCENARIOS, from the per-round
# values in the associative arrays KA (keep-alive) and CL (close).
rps_table() {
	local name
	echo "| scenario | keep-alive req/s | close req/s |"
	echo "| --- | ---: | ---: |"
	for name in "${SCENARIOS[@]}"; do
		selected "$name" || continue
		# shellcheck disable=SC2086 # split the per-round values
		echo "| $name | $(cell ${KA[$name]:-}) | $(cell ${CL[$name]:-}) |"
	done
}
