# Cluster benchmark (issue 13): the same subscribers on one channel held by 1 unpoll
# instance, or spread over 3 instances sharing a private Redis ([cluster]); messages
# published at CLUSTER_RATE per second for CLUSTER_SECONDS (through the instances' admin
# /publish in turn). Delivered fraction, p50/p99 publish -> receive latency, unpoll CPU
# per delivered event, and Redis CPU per published event (INFO cpu and commandstats
# deltas). The peer is unpoll alone (the issue's target: cluster p99 <= 1.5 x the single
# instance's). Sourced by benches/run.

CLUSTER_SUBSCRIBERS=${CLUSTER_SUBSCRIBERS:-15000}
CLUSTER_RATE=${CLUSTER_RATE:-100}
CLUSTER_SECONDS=${CLUSTER_SECONDS:-10}
# single: one instance, no [cluster]; cluster1: one instance through Redis (the cost of
# the Redis hop alone); cluster3: three instances through Redis.
CLUSTER_SYSTEMS=${CLUSTER_SYSTEMS:-"single cluster1 cluster3"}

# start_redis: a private redis-server (no persistence) on PROXY_CPU, beside the unpoll
# instances it serves. Sets REDIS_PG, REDIS_PORT.
start_redis() {
  REDIS_PORT=$(free_port)
  start redis "$PROXY_CPU" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --save "" --appendonly no
  REDIS_PG=$START_PID
  local i
  for ((i = 0; i < 100; i++)); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
    kill -0 "$REDIS_PG" 2>/dev/null || break
    sleep 0.1
  done
  die "redis-server did not start: $(tail -5 "$WORK/redis.log")"
}

# redis_cpu_us: Redis's own CPU time (user + sys) so far, in microseconds.
redis_cpu_us() {
  redis-cli -p "$REDIS_PORT" info cpu | tr -d '\r' | awk -F: '
    $1 == "used_cpu_sys" || $1 == "used_cpu_user" { s += $2 }
    END { printf "%.0f\n", s * 1e6 }'
}

# redis_cmd_us: microseconds Redis spent in scripts so far (commandstats of EVAL and
# EVALSHA). Every publish is one script; the commands a script calls are counted both in
# the script's time and under their own names, so summing every command would count them
# twice.
redis_cmd_us() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | awk -F'usec=' '
    /^cmdstat_eval(sha)?:/ { split($2, f, ","); s += f[1] } END { printf "%.0f\n", s }'
}

now_us() { echo $(($(date +%s%N) / 1000)); }

# cluster_run SYSTEM: start SYSTEM's instances, load them, append one row to
# $WORK/cluster.rows: system instances subscribers connected delivered p50 p99 max
# unpoll_us_per_delivered redis_cpu_us_per_event redis_cmd_us_per_event publish_secs
# messages_received.
cluster_run() {
  local sys=$1 n instances i conf chan urls=() pubs=() pgs=() msgs
  msgs=$((CLUSTER_RATE * CLUSTER_SECONDS))
  case $sys in
    single) instances=1 ;;
    cluster1) instances=1 ;;
    cluster3) instances=3 ;;
    *) die "unknown cluster system $sys" ;;
  esac
  local use_redis=0
  [[ $sys == cluster* ]] && use_redis=1
  ((use_redis)) && start_redis
  chan="c$RANDOM"
  for ((i = 0; i < instances; i++)); do
    conf=${UNPOLL_STREAM_CONF/UPSTREAM/$UPSTREAM_URL}
    if ((use_redis)); then
      conf+=$'\n'"[cluster]
redis = \"redis://127.0.0.1:$REDIS_PORT/0\"
node_id = \"n$i\""
    fi
    start_unpoll "node$i" "$conf" || die "unpoll did not start: $UNPOLL_WHY"
    local pg_var="NODE${i}_PG" url_var="NODE${i}_URL" admin_var="NODE${i}_ADMIN"
    pgs+=("${!pg_var}")
    urls+=(--url "${!url_var}/sub/$chan")
    pubs+=(--publish-url "${!admin_var}/publish")
  done
  # Redis's own idle CPU (its timers, the instances' connections), subtracted below: at a
  # few messages per second it would otherwise be most of the per-message figure.
  local idle_per_s=0 b0 b1
  if ((use_redis)); then
    b0=$(redis_cpu_us); sleep 2; b1=$(redis_cpu_us)
    idle_per_s=$(((b1 - b0) / 2))
  fi
  n=$CLUSTER_SUBSCRIBERS
  log "cluster: $sys, $instances instance(s), $n subscribers, $msgs messages at $CLUSTER_RATE/s"
  local name="sse-$sys" interval_us=$((1000000 / CLUSTER_RATE))
  start "$name" "$LOAD_CPU" "$ROOT/target/release/examples/bench-sse" \
    "${urls[@]}" --subscribers "$n" --messages "$msgs" --hold 3s \
    --interval "${interval_us}us" --drain 15s \
    "${pubs[@]}" --publish unpoll --channel "$chan" --token bench
  local client=$START_PID
  for ((i = 0; i < 3000; i++)); do
    grep -q '^connected' "$WORK/$name.log" 2>/dev/null && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1.5 # mid-hold: every subscriber connected and idle
  local t0=0 t1=0 pg r0=0 r1=0 c0=0 c1=0 w0 w1
  for pg in "${pgs[@]}"; do t0=$((t0 + $(group_ticks "$pg"))); done
  if ((use_redis)); then r0=$(redis_cpu_us); c0=$(redis_cmd_us); fi
  w0=$(now_us)
  for ((i = 0; i < 3000; i++)); do
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  for pg in "${pgs[@]}"; do t1=$((t1 + $(group_ticks "$pg"))); done
  if ((use_redis)); then r1=$(redis_cpu_us); c1=$(redis_cmd_us); fi
  w1=$(now_us)
  stop "$client"
  cp "$WORK/$name.log" "$WORK/$name.txt"
  local res
  res=$(grep '^RESULT ' "$WORK/$name.txt") || res=""
  awk -v sys="$sys" -v k="$instances" -v n="$n" -v res="$res" -v redis="$use_redis" \
    -v cpu_us=$(((t1 - t0) * 1000000 / CLK_TCK)) -v rcmd=$((c1 - c0)) \
    -v rcpu=$((r1 - r0 - idle_per_s * (w1 - w0) / 1000000)) '
  BEGIN {
    if (res == "") { printf "%s %d %d failed\n", sys, k, n; exit }
    split(res, f, " ")
    for (i in f) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
    m = v["messages"] - v["publish_errors"]
    printf "%s %d %d %d %.4f %.1f %.1f %.1f %.2f %s %s %.1f %d\n", sys, k, n, v["connected"],
      v["delivered"], v["p50_us"] / 1000, v["p99_us"] / 1000, v["max_us"] / 1000,
      (v["received"] > 0 ? cpu_us / v["received"] : 0),
      (redis && m > 0 ? sprintf("%.1f", rcpu / m) : "-"),
      (redis && m > 0 ? sprintf("%.1f", rcmd / m) : "-"),
      v["publish_secs"], v["received"]
  }' >>"$WORK/cluster.rows"
  for pg in "${pgs[@]}"; do stop "$pg"; done
  ((use_redis)) && stop "$REDIS_PG"
  return 0
}

bench_cluster() {
  ensure_deps util-linux:taskset curl:curl iproute2:ss redis-server:redis-server \
    redis-tools:redis-cli
  # 15,000 subscribers in one client process plus its publish connections; each unpoll
  # may hold up to FD_CAP. Up to the hard limit (raised first when root).
  ulimit -Hn 65536 2>/dev/null || true
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  (($(ulimit -n) > CLUSTER_SUBSCRIBERS + 100)) \
    || die "ulimit -n $(ulimit -n) is below $CLUSTER_SUBSCRIBERS subscribers"
  build
  start_upstream upstream
  : >"$WORK/cluster.rows"
  local sys
  for sys in $CLUSTER_SYSTEMS; do cluster_run "$sys"; done
  cluster_report | tee "$RESULTS/cluster.txt"
}

cluster_report() {
  echo
  echo "== cluster benchmark (issue 13), $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD)"
  echo "machine: $(machine_summary)"
  echo "method: one channel, $CLUSTER_SUBSCRIBERS EventSource subscribers (one bench-sse process,"
  echo "        1 thread, CPU $LOAD_CPU) spread evenly over the instances; $((CLUSTER_RATE * CLUSTER_SECONDS)) messages"
  echo "        at $CLUSTER_RATE/s through the instances' POST /publish in turn, each carrying its"
  echo "        publish time; unpoll instances and Redis share CPU $PROXY_CPU; CPU us/ev = unpoll"
  echo "        CPU (all instances) from the idle hold to the end / events delivered; Redis"
  echo "        us/msg = INFO cpu (used_cpu_user+sys) delta, minus Redis's idle rate measured"
  echo "        2 s before the load, / messages published; cmd us/msg = INFO commandstats usec"
  echo "        delta of EVAL+EVALSHA (the publish script) / messages; pub s = time the publisher took for"
  echo "        what should take ${CLUSTER_SECONDS}s (longer: the client could not keep pace)"
  printf '%-9s %2s %6s %9s %9s %8s %8s %8s %9s %9s %9s %6s\n' system k N connected delivered \
    'p50 ms' 'p99 ms' 'max ms' 'CPU us/ev' 'Redis us' 'cmd us' 'pub s'
  awk '$4 == "failed" { printf "%-9s %2d %6d failed\n", $1, $2, $3; next }
    { printf "%-9s %2d %6d %9d %9s %8s %8s %8s %9s %9s %9s %6s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 }' \
    "$WORK/cluster.rows"
  awk '$1 == "single" && $4 != "failed" { s = $7 } $1 == "cluster3" && $4 != "failed" { c = $7 }
    END { if (s > 0 && c != "") printf "p99 ratio cluster3 / single: %.2f (target <= 1.5)\n", c / s }' \
    "$WORK/cluster.rows"
}
