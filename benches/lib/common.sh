# Shared helpers for benches/run: dependencies, process lifetime, ports,
# readiness, CPU accounting and wrk. Sourced, not executed.
#
# Every process a benchmark starts goes through `start`, which makes it the
# leader of its own process group and records it; `cleanup` (an EXIT trap)
# kills exactly those groups, so nothing outlives the run.

# CPU layout: the process under test gets PROXY_CPU alone; the load generator
# and the upstream share LOAD_CPU. See BENCHMARKS.md "Method".
PROXY_CPU=${PROXY_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}

CLK_TCK=$(getconf CLK_TCK)
STARTED_PGIDS=()

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ensure_deps PKG:PROBE...: apt-get install the packages whose probe (a command
# name or an absolute path) is missing. Debian's maintainer scripts would start
# the packages' system services; a temporary policy-rc.d forbids that, since
# the benchmarks run their own instances.
ensure_deps() {
  local want=() spec pkg probe
  for spec in "$@"; do
    pkg=${spec%%:*} probe=${spec#*:}
    if [[ $probe == /* ]]; then [[ -e $probe ]] && continue
    else command -v "$probe" >/dev/null 2>&1 && continue; fi
    want+=("$pkg")
  done
  ((${#want[@]})) || return 0
  log "installing missing packages: ${want[*]}"
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}"; } || rc=$?
  ((made_policy)) && rm -f "$policy"
  ((rc == 0)) || die "apt-get install ${want[*]} failed"
}

# build: the release binary and the benchmark tools (examples).
build() {
  log "cargo build --release --bins --examples"
  (cd "$ROOT" && cargo build --release --bins --examples --quiet) || die "cargo build failed"
}

# start NAME CPU CMD...: run CMD pinned to CPU as its own process group, output
# to $WORK/NAME.log. Sets START_PID (= its process group id).
start() {
  local name=$1 cpu=$2; shift 2
  setsid taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 </dev/null &
  START_PID=$!
  STARTED_PGIDS+=("$START_PID")
}

# stop PGID: TERM the group, then KILL what is left of it and of the process
# tree (children that made groups of their own) after 3 s.
stop() {
  local pg=$1 i tree
  tree=$(tree_pids "$pg")
  kill -TERM -- "-$pg" 2>/dev/null || return 0
  for ((i = 0; i < 30; i++)); do
    kill -0 -- "-$pg" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$pg" 2>/dev/null || true
  # shellcheck disable=SC2086 # one pid per word
  kill -KILL $tree 2>/dev/null || true
  wait "$pg" 2>/dev/null || true
}

cleanup() {
  local pg
  for pg in "${STARTED_PGIDS[@]}"; do stop "$pg"; done
  STARTED_PGIDS=()
}

# free_port: a loopback TCP port no socket uses now, below the kernel's
# ephemeral range (32768+), which the load clients' connections fill.
free_port() {
  local p used
  used=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
  while :; do
    p=$((10000 + RANDOM % 22000))
    grep -qx "$p" <<<"$used" || { echo "$p"; return; }
  done
}

# wait_http URL PGID [SECONDS]: wait until URL answers 2xx, failing early if
# the process group PGID has died. Returns 1 on timeout or death. https URLs are
# the benchmarks' own self-signed certificate (-k).
wait_http() {
  local url=$1 pg=$2 deadline=$((SECONDS + ${3:-15}))
  while ((SECONDS < deadline)); do
    curl -kfsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
    kill -0 "$pg" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# tree_pids PID: PID and all its live descendants. Pushpin's runner puts its
# services in process groups of their own, so a process tree, not a process
# group, is what "the server" means.
tree_pids() {
  ps -e -o pid=,ppid= | awk -v root="$1" '
    { kids[$2] = kids[$2] " " $1 }
    END {
      n = 1; q[1] = root
      for (i = 1; i <= n; i++) {
        print q[i]; m = split(kids[q[i]], k, " ")
        for (j = 1; j <= m; j++) q[++n] = k[j]
      }
    }'
}

# stat_sum PID FIELD...: sum of the given /proc/PID/stat fields (1-based, as
# in proc(5)) over the process tree of PID.
stat_sum() {
  local root=$1 total=0 pid line rest f; shift
  local -a x
  for pid in $(tree_pids "$root"); do
    { read -r line <"/proc/$pid/stat"; } 2>/dev/null || continue
    rest=${line##*) }             # drop "pid (comm) ": comm may hold spaces
    read -ra x <<<"$rest"         # x[0] is field 3
    for f in "$@"; do total=$((total + x[f - 3])); done
  done
  echo "$total"
}

# group_ticks PID: utime+stime (clock ticks) of PID's process tree: nginx and
# Pushpin work in child processes, unpoll in threads (which /proc/PID/stat
# already sums). Time of children that exited is not counted.
group_ticks() { stat_sum "$1" 14 15; }

# group_cpu_ns PID: CPU time (ns) of every thread of PID's process tree, from
# /proc/*/task/*/schedstat: nanosecond resolution where utime+stime counts
# 10 ms ticks, for runs too short or too light for ticks (a broker handling 50
# messages). Time of threads that exited is not counted.
group_cpu_ns() {
  local pid total=0 ns rest
  for pid in $(tree_pids "$1"); do
    for f in /proc/"$pid"/task/*/schedstat; do
      { read -r ns rest <"$f"; } 2>/dev/null || continue
      total=$((total + ns))
    done
  done
  echo "$total"
}

# group_rss_kib PID: resident memory (KiB) of PID's process tree.
group_rss_kib() { echo $(($(stat_sum "$1" 24) * $(getconf PAGESIZE) / 1024)); }

# group_anon_kib PID: the anonymous part of that (RssAnon: heap, stacks), without the
# pages of the binary and libraries a process faults in as it first runs a code path.
group_anon_kib() {
  local pid total=0 kib
  for pid in $(tree_pids "$1"); do
    kib=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

# wrk_run NAME URL SECONDS [PGID]: wrk pinned to LOAD_CPU with CONNS
# connections; when PGID is given, measures that group's CPU time over the run.
# Prints "requests rps p50_us p99_us cpu_us_per_req cpu_pct errors".
wrk_run() {
  local name=$1 url=$2 secs=$3 pg=${4:-} t0=0 t1=0 out r
  [[ -n $pg ]] && t0=$(group_ticks "$pg")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${secs}s" --latency \
    -s "$BENCH_DIR/lib/report.lua" "$url" 2>&1) || die "wrk failed: $out"
  [[ -n $pg ]] && t1=$(group_ticks "$pg")
  printf '%s\n' "$out" >>"$WORK/wrk-$name.txt"
  r=$(grep '^RESULT ' <<<"$out") || die "no wrk result for $name"
  awk -v dt=$((t1 - t0)) -v hz="$CLK_TCK" -v pg="$pg" '{
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    secs = v["duration_us"] / 1e6; n = v["requests"]
    cpu_us = dt * 1e6 / hz
    printf "%d %.0f %d %d %s %s %d\n", n, n / secs, v["p50_us"], v["p99_us"],
      (pg == "" ? "-" : sprintf("%.1f", cpu_us / n)),
      (pg == "" ? "-" : sprintf("%.0f", 100 * cpu_us / 1e6 / secs)),
      v["err_status"] + v["err_socket"]
  }' <<<"$r"
}

# median: the median of the numbers on stdin ("-" if none).
median() {
  sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2];
    else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# machine_summary: one line describing where the numbers come from.
machine_summary() {
  local cpu
  cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  printf '%s, %s cores, %s, load avg %s' "$cpu" "$(nproc)" "$(uname -r)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
}

# The start of every fan-out config (streams, MQTT, watch): one worker, no access log,
# and connection and subscriber caps above the 10,000-subscriber runs (the defaults would
# leave most of them in the listen backlog or refuse them). Each bench appends its rules.
UNPOLL_FANOUT_BASE='listen = "127.0.0.1:PORT"
upstream = "UPSTREAM"
workers = 1
[admin]
listen = "127.0.0.1:ADMIN_PORT"
token = "bench"
[log]
access = false
[proxy]
max_connections = 19000
[hub]
max_subscribers_per_ip = 20000
max_subscribers_per_channel = 20000
'
