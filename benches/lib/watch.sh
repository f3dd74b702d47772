# Watch benchmark (issue 18): K users × T tabs following one per-user polling
# endpoint for WATCH_DURATION seconds (the DURATION knob, else 60), measured
# in one run three ways:
#   nginx-poll   every tab polls every P s through nginx (proxy_pass, no cache:
#                nginx cannot cache per-user data); what users run today;
#   watch-int    every tab watches the same URL through unpoll's [[watch]]
#                (vary = ["Cookie"], interval = P);
#   watch-tag    the same with interval = "0s": each change is signalled by
#                POST /purge of the rule's tag on the admin listener.
# WATCH_CHANGES changes are made at the upstream during each window. Reports
# upstream requests per minute, change → every tab latency, server CPU and
# memory per tab, and ratios against nginx polling. Sourced by benches/run.

WATCH_USERS=${WATCH_USERS:-100}
WATCH_TABS=${WATCH_TABS:-10}
WATCH_INTERVAL=${WATCH_INTERVAL:-5}
WATCH_CHANGES=${WATCH_CHANGES:-6}
# Tabs being opened at once (each watching user's first tab makes one fetch).
WATCH_OPENING=${WATCH_OPENING:-256}
# WATCH_WARM=0 takes the baseline RSS without the warm-up (see watch_warm).
WATCH_PATH=/twilio-chat/conversations

# Keep-alive to the app, as a production nginx in front of an app would have.
NGINX_POLL_CONF='
  upstream app {
    server UPSTREAM;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:PORT;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://app;
    }
  }'

# Every tab comes from 127.0.0.1: lift the per-IP and connection caps that
# would otherwise refuse most of 1,000 tabs.
UNPOLL_WATCH_CONF="$UNPOLL_FANOUT_BASE"'[[watch]]
path = "WATCH_PATH"
interval = "INTERVAL"
tags = ["twilio"]
vary = ["Cookie"]
min_interval = "200ms"'

# watch_system SYSTEM: start SYSTEM fresh; sets SYS_PG, SYS_URL, MODE and
# PURGE_ARGS. Returns 1 when unpoll does not start.
watch_system() {
  local conf
  PURGE_ARGS=()
  case $1 in
    nginx-poll)
      start_nginx nginx_poll "${NGINX_POLL_CONF/UPSTREAM/${UPSTREAM_URL#http://}}"
      SYS_PG=$NGINX_POLL_PG SYS_URL=$NGINX_POLL_URL MODE=poll
      ;;
    watch-int | watch-tag)
      conf=${UNPOLL_WATCH_CONF/UPSTREAM/$UPSTREAM_URL}
      conf=${conf/WATCH_PATH/$WATCH_PATH}
      if [[ $1 == watch-int ]]; then
        conf=${conf/INTERVAL/${WATCH_INTERVAL}s}
      else
        conf=${conf/INTERVAL/0s}
      fi
      start_unpoll unpoll_watch "$conf" || return 1
      SYS_PG=$UNPOLL_WATCH_PG SYS_URL=$UNPOLL_WATCH_URL MODE=watch
      if [[ $1 == watch-tag ]]; then
        PURGE_ARGS=(--purge-url "$UNPOLL_WATCH_ADMIN/purge" --token bench)
      fi
      ;;
    *) die "WATCH_SYSTEMS: unknown system '$1' (nginx-poll, watch-int, watch-tag)" ;;
  esac
}

# wait_line PGID LOG PREFIX: wait (up to 2 min) for a line starting with PREFIX
# in LOG, or for the process to end.
wait_line() {
  local pg=$1 log=$2 prefix=$3 i
  for ((i = 0; i < 1200; i++)); do
    grep -q "^$prefix" "$log" 2>/dev/null && return 0
    kill -0 "$pg" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# watch_warm: before the baseline RSS, run each path a tab takes once (4 short streams
# and a poll of other users' keys), then wait until their streams and the server's idle
# connections to the app are gone. What this faults in (the code pages of those paths,
# the structures a server sizes on first use) is the process's, paid once, not any tab's.
watch_warm() {
  local i pids=()
  for i in 1 2 3 4; do
    curl -s -o /dev/null --max-time 1 -H "Cookie: user=warm$i" \
      -H 'Accept: text/event-stream' "$SYS_URL$WATCH_PATH" &
    pids+=($!)
  done
  curl -s -o /dev/null --max-time 2 -H "Cookie: user=warm0" "$SYS_URL$WATCH_PATH" || true
  wait "${pids[@]}" || true
  # unpoll closes idle app connections after proxy.pool_idle_timeout (1 s), swept each
  # second; then the baseline.
  sleep 2.5
}

# watch_run SYSTEM: one measured run on a fresh server. Appends to
# $WORK/watch.rows: system tabs connected delivered p50 p99 max upstream/min
# kib_per_tab cpu_ms_per_min app_ms_per_min crossed errors change_errors
# upstream_in_window kib_per_user kib_per_extra_tab cpu_us_per_delivery
# app_connections anon_kib_per_tab
watch_run() {
  local sys=$1 rss0 rssk rss1 anon0 anon1 t0 t1 up0 up1 client i log res conns
  if ! watch_system "$sys"; then
    printf '%s unpoll-missing\n' "$sys" >>"$WORK/watch.rows"
    WATCH_MISSING="unpoll not measured: $UNPOLL_WHY"
    log "$WATCH_MISSING"
    return
  fi
  if [[ ${WATCH_WARM:-1} == 0 ]]; then
    sleep 1 # the method before 2026-12-01 13:30: only let the fresh server settle
  else
    watch_warm
  fi
  rss0=$(group_rss_kib "$SYS_PG")
  anon0=$(group_anon_kib "$SYS_PG")
  log "watch: $sys, $WATCH_USERS users × $WATCH_TABS tabs, ${WATCH_DURATION}s, $WATCH_CHANGES changes"
  start "watch-$sys" "$LOAD_CPU" "$ROOT/target/release/examples/bench-watch" \
    --url "$SYS_URL$WATCH_PATH" --mode "$MODE" --users "$WATCH_USERS" --tabs "$WATCH_TABS" \
    --interval "${WATCH_INTERVAL}s" --duration "${WATCH_DURATION}s" --changes "$WATCH_CHANGES" \
    --change-url "$UPSTREAM_URL/_change" --count-url "$UPSTREAM_URL/_count" --hold 3s \
    --connect-concurrency "$WATCH_OPENING" "${PURGE_ARGS[@]}"
  client=$START_PID
  log="$WORK/watch-$sys.log"
  # Mid-hold after each phase: one tab per user open, then every tab.
  wait_line "$client" "$log" users && sleep 1.5
  rssk=$(group_rss_kib "$SYS_PG")
  # Connections the server holds to the app: part of each user's cost when
  # every user's first fetch ran at once.
  conns=$(ss -Htn state established "( dport = :${UPSTREAM_URL##*:} )" | wc -l)
  wait_line "$client" "$log" connected && sleep 1.5
  rss1=$(group_rss_kib "$SYS_PG")
  anon1=$(group_anon_kib "$SYS_PG")
  wait_line "$client" "$log" measuring || true
  t0=$(group_ticks "$SYS_PG")
  up0=$(group_ticks "$UPSTREAM_PG")
  # The client stops itself after WATCH_DURATION; the bound here only guards a hang.
  for ((i = 0; i < (WATCH_DURATION + 60) * 10; i++)); do
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  t1=$(group_ticks "$SYS_PG")
  up1=$(group_ticks "$UPSTREAM_PG")
  stop "$client"
  cp "$log" "$WORK/watch-$sys.txt"
  res=$(grep '^RESULT ' "$log") || res=""
  awk -v sys="$sys" -v d=$((rss1 - rss0)) -v dk=$((rssk - rss0)) -v dt=$((rss1 - rssk)) \
    -v k="$WATCH_USERS" -v res="$res" -v hz="$CLK_TCK" -v cpu=$((t1 - t0)) \
    -v app=$((up1 - up0)) -v conns="$conns" -v da=$((anon1 - anon0)) 'BEGIN {
    if (res == "") { printf "%s failed\n", sys; exit }
    split(res, f, " "); for (i in f) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
    w = v["window_s"]; c = v["connected"]
    printf "%s %d %d %.4f %.1f %.1f %.1f %.0f %.2f %.0f %.0f %d %d %d %d %.2f %.2f %.1f %d %.2f\n", sys,
      v["tabs"], c, v["delivered"], v["p50_us"] / 1000, v["p99_us"] / 1000,
      v["max_us"] / 1000, v["upstream"] * 60 / w, (c > 0 ? d / c : 0),
      cpu * 1000 / hz * 60 / w, app * 1000 / hz * 60 / w, v["crossed"], v["errors"],
      v["change_errors"], v["upstream"], dk / k, (c > k ? dt / (c - k) : 0),
      (v["received"] > 0 ? cpu * 1e6 / hz / v["received"] : 0), conns, (c > 0 ? da / c : 0)
  }' >>"$WORK/watch.rows"
  stop "$SYS_PG"
}

bench_watch() {
  ensure_deps nginx:nginx util-linux:taskset curl:curl iproute2:ss
  # 1,000 tabs hold 1,000 connections in the client and in the server, and
  # nginx as many again to the app when keep-alive runs short.
  ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
  build
  start_upstream upstream
  WATCH_MISSING=""
  : >"$WORK/watch.rows"
  local sys
  for sys in ${WATCH_SYSTEMS:-nginx-poll watch-int watch-tag}; do watch_run "$sys"; done
  watch_report | tee "$RESULTS/watch.txt"
}

watch_report() {
  local k=$WATCH_USERS p=$WATCH_INTERVAL c=$WATCH_CHANGES
  echo
  echo "== watch benchmark (issue 18), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(machine_summary)"
  echo "method: $k users × $WATCH_TABS tabs (Cookie user=u<k>) follow $WATCH_PATH, a 1 KiB"
  echo "        per-user JSON body, for a ${WATCH_DURATION}s window; $c changes evenly spaced (upstream"
  echo "        POST /_change; watch-tag: then POST /purge of the tag). nginx-poll: GET every ${p}s"
  echo "        through nginx proxy_pass (keep-alive, no cache); watch-int: EventSource through"
  echo "        unpoll [[watch]] vary=[Cookie] interval=${p}s; watch-tag: interval=0s, purges."
  echo "        Server alone on CPU $PROXY_CPU; client (bench-watch, 1 thread) + upstream on CPU $LOAD_CPU."
  echo "        upstream/min: app requests in the window ×60/window (page loads and first events"
  echo "        excluded); latency: upstream change → a tab holds the new body, over every"
  echo "        (tab, change); KiB/tab: server RSS with every tab open minus before, / tabs;"
  echo "        before = after a warm-up of 4 short streams and a poll by other users (the"
  echo "        code pages and first-use structures of those paths are the process's, once)"
  echo "        (unpoll: includes one 1 KiB body per user, i.e. 1/$WATCH_TABS KiB per tab);"
  echo "        CPU ms/min: server (and app) CPU time in the window per minute; CPU us/dlv: server
        CPU in the window / (tab, change) deliveries"
  echo "targets: watch-int upstream/min ≤ K×60/P = $((k * 60 / p)); watch-tag upstream in window ≤ C×K = $((c * k))"
  echo "         (per minute ≤ $((c * k * 60 / WATCH_DURATION))); change → every tab p99 ≤ 50 ms (watch-tag); ≤ 4 KiB + body per tab"
  printf '%-10s %5s %9s %9s %8s %8s %8s %12s %11s %11s %11s %7s %6s %7s\n' system tabs \
    connected delivered 'p50 ms' 'p99 ms' 'max ms' upstream/min 'CPU ms/min' \
    'app ms/min' 'CPU us/dlv' crossed errors chg-err
  awk '$2 == "unpoll-missing" || $2 == "failed" { printf "%-10s %s\n", $1, $2; next }
    { printf "%-10s %5d %9d %9s %8s %8s %8s %12s %11s %11s %11s %7s %6s %7s\n",
        $1, $2, $3, $4, $5, $6, $7, $8, $10, $11, $18, $12, $13, $14 }' "$WORK/watch.rows"
  echo
  echo "server memory (RSS, KiB): per tab = all tabs open minus before, / tabs; per user ="
  echo "one tab per user open minus before, / users (key, watcher or connection, body, first tab);"
  echo "per extra tab = all tabs minus one per user, / the other tabs; app conns = connections"
  echo "from the server to the app with one tab per user open; anon KiB/tab = per tab from"
  echo "RssAnon alone (heap and stacks, not the binary's code pages first run during the test)"
  printf '%-10s %9s %9s %14s %10s %14s\n' system KiB/tab KiB/user 'KiB/extra tab' 'app conns' \
    'anon KiB/tab'
  awk '$2 == "unpoll-missing" || $2 == "failed" { next }
    { printf "%-10s %9s %9s %14s %10s %14s\n", $1, $9, $16, $17, $19, $20 }' "$WORK/watch.rows"
  echo
  echo "ratios vs nginx-poll (lower is better):"
  awk '$2 == "unpoll-missing" || $2 == "failed" { next }
    $1 == "nginx-poll" { up = $8; p99 = $6; cpu = $10; app = $11; next }
    up != "" {
      printf "  %-10s upstream/min %s  p99 latency %s  server CPU %s  app CPU %s\n", $1,
        r($8, up), r($6, p99), r($10, cpu), r($11, app)
    }
    function r(a, b) { return (b > 0 ? sprintf("%.3fx", a / b) : "-") }' "$WORK/watch.rows"
  echo
  echo "targets:"
  awk -v k="$k" -v p="$p" -v c="$c" -v t="$WATCH_TABS" '
    $2 == "unpoll-missing" || $2 == "failed" { next }
    function ok(b) { return b ? "met" : "NOT met" }
    $1 == "watch-int" {
      printf "  watch-int  upstream/min %s ≤ %d: %s\n", $8, k * 60 / p, ok($8 <= k * 60 / p)
    }
    $1 == "watch-tag" {
      printf "  watch-tag  upstream in window %d ≤ C×K = %d: %s\n", $15, c * k, ok($15 <= c * k)
      printf "  watch-tag  change → every tab p99 %s ms ≤ 50 ms: %s\n", $6, ok($6 <= 50)
    }
    $1 ~ /^watch-/ {
      body = 1 / t
      printf "  %-10s memory per tab %s KiB = %.2f KiB + %.2f KiB of shared body: %s\n", $1, $9,
        $9 - body, body, ok($9 - body <= 4)
      printf "  %-10s memory per extra tab of a watched key %s KiB ≤ 4 KiB: %s\n", $1, $17,
        ok($17 <= 4)
    }' "$WORK/watch.rows"
  [[ -z $WATCH_MISSING ]] || echo "$WATCH_MISSING"
}
