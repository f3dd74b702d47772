# Fan-out benchmark (issue 4): N SSE subscribers on one channel, messages
# published 200 ms apart; delivery latency, fraction delivered, server memory
# per idle subscriber; and FANOUT_IDLE subscribers held at once. unpoll vs
# Pushpin vs Nchan. Sourced by benches/run.

FANOUT_SIZES=${FANOUT_SIZES:-"1000 10000"}
FANOUT_IDLE=${FANOUT_IDLE:-15000}
FANOUT_MESSAGES=${FANOUT_MESSAGES:-20}
# Each server may hold up to 20,000 open files (the machine's cap).
FD_CAP=19500

NCHAN_CONF='
  server {
    listen 127.0.0.1:PORT;
    location = /_count { return 200 "ok"; }
    location ~ ^/pub/(\w+)$ {
      nchan_publisher;
      nchan_channel_id $1;
    }
    location ~ ^/sub/(\w+)$ {
      nchan_subscriber eventsource;
      nchan_channel_id $1;
    }
  }'

# Every subscriber comes from 127.0.0.1 and joins one channel: the per-IP
# (1,000) and per-channel (10,000) defaults would refuse most of them, and the
# 10,000-connection default cap would leave the rest in the listen backlog.
UNPOLL_STREAM_CONF="$UNPOLL_FANOUT_BASE"'[[stream]]
path = "/sub/{channel}"
channels = ["{path.channel}"]
auth = "none"'

# start_pushpin NAME: Pushpin (runner, condure, proxy, handler) on PROXY_CPU,
# routing to the upstream, whose /grip/ paths answer with GRIP hold headers.
# The Debian config is copied with ports and sockets moved under $WORK, its
# own zurl (outgoing HTTP), and
# with the handler's delivery throttle (message_rate=2500/s, message_hwm=25000)
# lifted: at 10,000 subscribers the default would pace one message over 4 s,
# which measures the throttle, not Pushpin.
start_pushpin() {
  local name=$1 port control dir
  port=$(free_port)
  control=$(free_port)
  dir="$WORK/$name"
  mkdir -p "$dir/run" "$dir/log"
  # Debian points the proxy at a system-wide zurl (/var/run/zurl); run our own
  # zurl under the runner instead, on sockets in our run dir.
  sed 's|ipc:///var/run/zurl/|ipc://{rundir}/{ipc_prefix}|' \
    /usr/lib/pushpin/internal.conf >"$dir/internal.conf"
  sed -e "s|^include=.*|include=$dir/internal.conf|" \
    -e "s|^services=.*|services=condure,zurl,pushpin-proxy,pushpin-handler|" \
    -e "s|^rundir=.*|rundir=$dir/run|" \
    -e "s|^logdir=.*|logdir=$dir/log|" \
    -e "s|^push_in_spec=.*|push_in_spec=ipc://$dir/run/push-in|" \
    -e "s|^push_in_sub_specs=.*|push_in_sub_specs=ipc://$dir/run/push-in-sub|" \
    -e "s|^command_spec=tcp.*|command_spec=ipc://$dir/run/command|" \
    -e "s|^push_in_http_port=.*|push_in_http_port=$control|" \
    -e "s|^client_maxconn=.*|client_maxconn=$FD_CAP|" \
    -e "s|^message_rate=.*|message_rate=1000000|" \
    -e "s|^message_hwm=.*|message_hwm=1000000|" \
    -e "s|^updates_check=.*|updates_check=off|" \
    /etc/pushpin/pushpin.conf >"$dir/pushpin.conf"
  start "$name" "$PROXY_CPU" pushpin --config "$dir/pushpin.conf" \
    --port "127.0.0.1:$port" --route "* ${UPSTREAM_URL#http://}" --merge-output
  wait_http "http://127.0.0.1:$port/_count" "$START_PID" 30 \
    || die "$name did not start: $(tail -5 "$WORK/$name.log")"
  PUSHPIN_PG=$START_PID
  PUSHPIN_URL="http://127.0.0.1:$port"
  PUSHPIN_CONTROL="http://127.0.0.1:$control"
}

# fanout_system SYSTEM: start SYSTEM fresh; sets SYS_PG, SUB_BASE (subscriber
# URL without channel), PUB_URL_BASE, PUB_FLAVOUR, TRANSPORT. Returns 1 when
# unpoll cannot run a stream config yet. unpoll-ws is unpoll with WebSocket
# subscribers on the same [[stream]] rule.
fanout_system() {
  TRANSPORT=sse
  case $1 in
    nchan)
      NGINX_LOAD_MODULES="load_module $NCHAN_MODULE;" start_nginx nchan "$NCHAN_CONF"
      SYS_PG=$NCHAN_PG SUB_BASE="$NCHAN_URL/sub/" PUB_URL_BASE="$NCHAN_URL/pub/" PUB_FLAVOUR=nchan
      ;;
    pushpin)
      start_pushpin pushpin
      SYS_PG=$PUSHPIN_PG SUB_BASE="$PUSHPIN_URL/grip/" PUB_URL_BASE="$PUSHPIN_CONTROL/publish/"
      PUB_FLAVOUR=pushpin
      ;;
    unpoll | unpoll-ws)
      [[ $1 == unpoll-ws ]] && TRANSPORT=websocket
      start_unpoll unpoll "${UNPOLL_STREAM_CONF/UPSTREAM/$UPSTREAM_URL}" || return 1
      SYS_PG=$UNPOLL_PG SUB_BASE="$UNPOLL_URL/sub/" PUB_URL_BASE="$UNPOLL_ADMIN/publish"
      PUB_FLAVOUR=unpoll
      ;;
  esac
}

# fanout_run SYSTEM N MESSAGES: one measured run on a fresh server and a
# fresh channel. Appends "system n connected delivered p50 p99 max kib_per_sub"
# to $WORK/fanout.rows.
fanout_run() {
  local sys=$1 n=$2 msgs=$3 chan rss0 rss1 out res pub_url i
  if ! fanout_system "$sys"; then
    printf '%s %s unpoll-missing\n' "$sys" "$n" >>"$WORK/fanout.rows"
    log "unpoll not measured: $UNPOLL_WHY"
    FANOUT_MISSING="unpoll not measured: $UNPOLL_WHY"
    return
  fi
  chan="c$RANDOM"
  pub_url=$PUB_URL_BASE
  [[ $PUB_FLAVOUR == nchan ]] && pub_url+=$chan
  sleep 1 # let the fresh server settle before its baseline RSS
  rss0=$(group_rss_kib "$SYS_PG")
  out="$WORK/sse-$sys-$n-$msgs.txt"
  log "fanout: $sys, $n subscribers, $msgs messages"
  start "sse-$sys-$n" "$LOAD_CPU" "$ROOT/target/release/examples/bench-sse" \
    --url "$SUB_BASE$chan" --subscribers "$n" --messages "$msgs" --hold 3s \
    --publish-url "$pub_url" --publish "$PUB_FLAVOUR" --channel "$chan" --token bench \
    --transport "$TRANSPORT"
  local client=$START_PID
  for ((i = 0; i < 1200; i++)); do
    grep -q '^connected' "$WORK/sse-$sys-$n.log" 2>/dev/null && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1.5 # mid-hold: every subscriber connected and idle
  rss1=$(group_rss_kib "$SYS_PG")
  local t0 t1
  t0=$(group_ticks "$SYS_PG")
  for ((i = 0; i < 1200; i++)); do
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  t1=$(group_ticks "$SYS_PG")
  stop "$client"
  cp "$WORK/sse-$sys-$n.log" "$out"
  res=$(grep '^RESULT ' "$out") || res=""
  awk -v sys="$sys" -v n="$n" -v d=$((rss1 - rss0)) -v res="$res" \
    -v cpu_us=$(((t1 - t0) * 1000000 / CLK_TCK)) 'BEGIN {
    split(res, f, " ")
    for (i in f) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
    if (res == "") { printf "%s %d failed\n", sys, n; exit }
    if (v["messages"] == 0) {
      printf "%s %d %d - - - - %.2f %d -\n", sys, n, v["connected"],
        (v["connected"] > 0 ? d / v["connected"] : 0), v["retries"]
      exit
    }
    printf "%s %d %d %.4f %.1f %.1f %.1f %.2f %d %.1f\n", sys, n, v["connected"], v["delivered"],
      v["p50_us"] / 1000, v["p99_us"] / 1000, v["max_us"] / 1000,
      (v["connected"] > 0 ? d / v["connected"] : 0), v["retries"],
      (v["received"] > 0 ? cpu_us / v["received"] : 0)
  }' >>"$WORK/fanout.rows"
  stop "$SYS_PG"
}

bench_fanout() {
  NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
  local systems=${FANOUT_SYSTEMS:-unpoll unpoll-ws pushpin nchan}
  # Only the peers this run measures.
  local deps=(util-linux:taskset curl:curl iproute2:ss)
  [[ " $systems " == *" pushpin "* ]] && deps+=(pushpin:pushpin)
  [[ " $systems " == *" nchan "* ]] && deps+=(nginx:nginx "libnginx-mod-nchan:$NCHAN_MODULE")
  ensure_deps "${deps[@]}"
  build
  start_upstream upstream
  FANOUT_MISSING=""
  local sys n
  for sys in $systems; do
    for n in $FANOUT_SIZES; do fanout_run "$sys" "$n" "$FANOUT_MESSAGES"; done
    fanout_run "$sys" "$FANOUT_IDLE" 0
  done
  fanout_report | tee "$RESULTS/fanout.txt"
}

fanout_report() {
  echo
  echo "== fan-out benchmark (issue 4), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(machine_summary)"
  echo "method: one channel, N EventSource subscribers (bench-sse, 1 thread, CPU $LOAD_CPU;"
  echo "        unpoll-ws: WebSocket subscribers of the same rule),"
  echo "        $FANOUT_MESSAGES messages 200 ms apart carrying their publish time; server on CPU $PROXY_CPU;"
  echo "        memory = server RSS (all its processes) with N idle subscribers minus before, / N;"
  echo "        rows with 0 messages hold N idle subscribers at once; retries = failed"
  echo "        subscription attempts retried after 200 ms (as EventSource does), up to 3 each;"
  echo "        CPU us/ev = server CPU time from the idle hold to the end / events delivered"
  printf '%-9s %6s %9s %9s %8s %8s %8s %9s %8s %9s\n' system N connected delivered 'p50 ms' \
    'p99 ms' 'max ms' 'KiB/sub' retries 'CPU us/ev'
  awk '$3 == "unpoll-missing" || $3 == "failed" { printf "%-9s %6d %s\n", $1, $2, $3; next }
    { printf "%-9s %6d %9d %9s %8s %8s %8s %9s %8s %9s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 }' \
    "$WORK/fanout.rows"
  [[ -z $FANOUT_MISSING ]] || echo "$FANOUT_MISSING"
}
