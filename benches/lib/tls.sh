# TLS benchmark (issue 12): unpoll's TLS listener against nginx with the same
# self-signed certificate, and idle HTTP/2 SSE streams against Nchan over h2.
# Sourced by benches/run.
#
# Three parts, each server on PROXY_CPU alone, the load (h2load, bench-h2-idle)
# and the upstream on LOAD_CPU:
# 1. handshakes: a new TLS connection per request, with ALPN http/1.1 (h2load
#    --h1 and `Connection: close`: h2load reconnects after every response) and
#    ALPN h2 (h2load runs of TLS_HS_CONNS clients x 1 request, back to back);
# 2. proxying a 1 KiB JSON response over TLS, h1 (h2load --h1) and h2 (h2load,
#    TLS_H2_CONNS connections x TLS_H2_STREAMS streams);
# 3. idle h2 SSE streams: TLS_IDLE_STREAMS streams over each of TLS_IDLE_CONNS
#    connection counts, server RSS per stream including its connection share.
# The measure that matters is server CPU time per handshake / request, from
# /proc: the client does as much TLS work as the server on the one CPU it has,
# so rates are client-bound on this 2-core machine.

TLS_KEY=${TLS_KEY:-ec}
TLS_HS_CONNS=${TLS_HS_CONNS:-16}
TLS_H2_CONNS=${TLS_H2_CONNS:-8}
TLS_H2_STREAMS=${TLS_H2_STREAMS:-8}
TLS_IDLE_STREAMS=${TLS_IDLE_STREAMS:-10000}
TLS_IDLE_CONNS=${TLS_IDLE_CONNS:-"100 10"}
# Streams per connection allowed on both sides (unpoll [tls] max_concurrent_streams,
# nginx http2_max_concurrent_streams, default 128): 10,000 streams over 10
# connections need 1,000.
TLS_MAX_STREAMS=${TLS_MAX_STREAMS:-1000}

# The TLS part of the server blocks, the same for every nginx. No session
# cache and no tickets: every handshake is a full one (h2load does not resume
# sessions anyway, and rustls issues no tickets by default). nginx 1.22 (Debian
# 12) spells h2 as `listen ... ssl http2`; `http2 on;` came in 1.25.1. nginx
# closes a connection after keepalive_requests (1,000) requests, an h2 one
# with GOAWAY that fails h2load's requests in flight and stops that client;
# unpoll has no such limit.
NGINX_TLS_COMMON='
    listen 127.0.0.1:PORT ssl http2;
    ssl_certificate CERT;
    ssl_certificate_key KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    http2_max_concurrent_streams MAXSTREAMS;
    keepalive_requests 100000000;'

NGINX_TLS_PROXY_CONF='
  upstream app {
    server UPSTREAM;
    keepalive 64;
  }
  server {
TLSCOMMON
    listen 127.0.0.1:PLAINPORT;
    location = /_nginx_status { stub_status; }
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }'

NCHAN_TLS_CONF='
  server {
TLSCOMMON
    location = /_count { return 200 "ok"; }
    location = /_nginx_status { stub_status; }
    location ~ ^/sub/(\w+)$ {
      nchan_subscriber eventsource;
      nchan_channel_id $1;
    }
  }'

UNPOLL_TLS_PROXY_CONF='listen = "127.0.0.1:PORT"
upstream = "UPSTREAM"
workers = 1
[tls]
cert = "CERT"
key = "KEY"
max_concurrent_streams = MAXSTREAMS
[admin]
listen = "127.0.0.1:ADMIN_PORT"
[log]
access = false'

UNPOLL_PLAIN_PROXY_CONF='listen = "127.0.0.1:PORT"
upstream = "UPSTREAM"
workers = 1
[admin]
listen = "127.0.0.1:ADMIN_PORT"
[log]
access = false'

# As benches/lib/fanout.sh: every stream comes from 127.0.0.1 and joins one
# channel, beyond the per-IP and per-channel defaults.
UNPOLL_TLS_STREAM_CONF="$UNPOLL_TLS_PROXY_CONF
[hub]
max_subscribers_per_ip = 20000
max_subscribers_per_channel = 20000
[[stream]]
path = \"/sub/{channel}\"
channels = [\"{path.channel}\"]
auth = \"none\""

# tls_cert: a self-signed certificate for localhost and 127.0.0.1 in
# $WORK/tls/{cert,key}.pem, ECDSA P-256 (TLS_KEY=ec) or RSA 2048 (TLS_KEY=rsa).
# A leaf, not a CA (openssl req -x509 makes a CA by default, which webpki, the
# verifier of rustls clients, refuses as a server certificate).
tls_cert() {
  local dir="$WORK/tls" alg
  mkdir -p "$dir"
  case $TLS_KEY in
    ec) alg=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) TLS_KEY_DESC="ECDSA P-256" ;;
    rsa) alg=(-newkey rsa:2048) TLS_KEY_DESC="RSA 2048" ;;
    *) die "TLS_KEY must be ec or rsa, not $TLS_KEY" ;;
  esac
  openssl req -x509 "${alg[@]}" -nodes -days 7 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>"$WORK/openssl.log" \
    || die "openssl req failed: $(tail -3 "$WORK/openssl.log")"
  TLS_CERT="$dir/cert.pem" TLS_KEY_FILE="$dir/key.pem"
}

# tls_fill TEMPLATE [UPSTREAM]: TEMPLATE with the certificate, key, stream cap and the
# common nginx TLS block filled in (PORT and ADMIN_PORT are left to start_*).
tls_fill() {
  local t=${1//TLSCOMMON/$NGINX_TLS_COMMON}
  t=${t//CERT/$TLS_CERT}
  t=${t//KEY/$TLS_KEY_FILE}
  t=${t//MAXSTREAMS/$TLS_MAX_STREAMS}
  t=${t//UPSTREAM/${2:-}}
  t=${t//PLAINPORT/${TLS_PLAIN_PORT:-}}
  printf '%s' "$t"
}

# tls_start SYSTEM: start SYSTEM (nginx, unpoll, nchan, unpoll-sse) fresh; sets
# SYS_PG and SYS_URL (https). Returns 1, with UNPOLL_WHY set, when unpoll
# cannot run a TLS config (the [tls] section is not in this build).
tls_start() {
  case $1 in
    nginx)
      TLS_PLAIN_PORT=$(free_port)
      NGINX_SCHEME=https start_nginx nginx "$(tls_fill "$NGINX_TLS_PROXY_CONF" \
        "${UPSTREAM_URL#http://}")"
      SYS_PG=$NGINX_PG SYS_URL=$NGINX_URL
      SYS_PLAIN_PG=$NGINX_PG SYS_PLAIN_URL="http://127.0.0.1:$TLS_PLAIN_PORT"
      ;;
    nchan)
      NGINX_SCHEME=https NGINX_LOAD_MODULES="load_module $NCHAN_MODULE;" \
        start_nginx nchan "$(tls_fill "$NCHAN_TLS_CONF")"
      SYS_PG=$NCHAN_PG SYS_URL=$NCHAN_URL
      ;;
    floor)
      # hyper, tokio and rustls alone (benches/tools/hyper_floor.rs): the floor under
      # unpoll's CPU per request on this stack.
      start_floor floor --cert "$TLS_CERT" --key "$TLS_KEY_FILE"
      start_floor floorplain
      SYS_PG=$FLOOR_PG SYS_URL=$FLOOR_URL
      SYS_PLAIN_PG=$FLOORPLAIN_PG SYS_PLAIN_URL=$FLOORPLAIN_URL
      ;;
    unpoll | unpoll-sse)
      local conf=$UNPOLL_TLS_PROXY_CONF
      [[ $1 == unpoll-sse ]] && conf=$UNPOLL_TLS_STREAM_CONF
      start_unpoll unpoll "$(tls_fill "$conf" "$UPSTREAM_URL")" || return 1
      SYS_PG=$UNPOLL_PG SYS_URL=${UNPOLL_URL/#http:/https:}
      # The admin listener answering says nothing about the TLS one.
      wait_http "$SYS_URL/_count" "$SYS_PG" || {
        UNPOLL_WHY="no TLS answer on $SYS_URL: $(tail -c 300 "$WORK/unpoll.log" | tr '\n' ' ')"
        stop "$SYS_PG"
        return 1
      }
      # The plain-HTTP baseline: a second unpoll without [tls] (the main
      # listener is either TLS or plain).
      if [[ $1 == unpoll ]]; then
        local pg=$SYS_PG url=$SYS_URL
        start_unpoll unpollplain "$(tls_fill "$UNPOLL_PLAIN_PROXY_CONF" "$UPSTREAM_URL")" \
          || die "plain unpoll did not start: $UNPOLL_WHY"
        SYS_PLAIN_PG=$UNPOLLPLAIN_PG SYS_PLAIN_URL=$UNPOLLPLAIN_URL SYS_PG=$pg SYS_URL=$url
      fi
      ;;
  esac
}

# tls_server_conns SYSTEM: connections the server has accepted so far, by its
# own count: unpoll's successful handshakes (unpoll_tls_handshakes_total, h2
# and http1), nginx's stub_status accepts (which count this request too).
# Compared with the requests of a handshake run, it shows that each request
# had a new TLS connection.
tls_server_conns() {
  case $1 in
    nginx) curl -kfsS --max-time 5 "$TLS_NGINX_URL/_nginx_status" | awk 'NR == 3 {print $1}' ;;
    unpoll)
      curl -fsS --max-time 5 "$UNPOLL_ADMIN/metrics" | awk '
        /^unpoll_tls_handshakes_total\{result="(h2|http1)"\}/ {n += $2} END {print n + 0}' ;;
  esac
}

# tls_counted SYSTEM CMD...: CMD's output line (see h2load_run) with the
# server's new connections per 2xx response appended ("-" for the floor, which
# counts nothing).
tls_counted() {
  local sys=$1 c0 c1 line; shift
  if [[ $sys == floor ]]; then
    line=$("$@")
    echo "$line -"
    return
  fi
  c0=$(tls_server_conns "$sys")
  line=$("$@")
  c1=$(tls_server_conns "$sys")
  awk -v c=$((c1 - c0)) '{printf "%s %.3f\n", $0, ($1 > 0 ? c / $1 : 0)}' <<<"$line"
}

# h2load_run NAME PG ARGS...: h2load -t1 on LOAD_CPU with ARGS, measuring
# the CPU time of process group PG over the run. Prints "done rate
# mean_us cpu_us_per_op errors" and keeps h2load's output in $WORK. A run that
# has not ended after 5 minutes is killed (h2load -D never ends when the
# server closes connections, hence -n for the handshake runs).
h2load_run() {
  local name=$1 pg=$2 t0 t1 out; shift 2
  t0=$(group_ticks "$pg")
  out=$(taskset -c "$LOAD_CPU" timeout 300 h2load -t1 "$@" 2>&1) \
    || die "h2load failed ($name): $(tail -3 <<<"$out")"
  t1=$(group_ticks "$pg")
  printf '%s\n' "$out" >>"$WORK/h2load-$name.txt"
  h2load_parse "$out" $((t1 - t0))
}

# tls_handshakes_h1 SYSTEM NAME PG URL SECONDS: new TLS connections (ALPN
# http/1.1), one request each, for about SECONDS: a calibration run of 50 per
# client (also the warm-up) sets the count of the measured run. Prints what
# tls_counted prints for the measured run.
tls_handshakes_h1() {
  local sys=$1 name=$2 pg=$3 url=$4 secs=$5 rate n
  rate=$(h2load_run "$name-warmup" "$pg" --h1 -c "$TLS_HS_CONNS" -n $((TLS_HS_CONNS * 50)) \
    -H 'Connection: close' "$url" | cut -d' ' -f2)
  n=$((rate * secs))
  ((n >= TLS_HS_CONNS * 50)) || n=$((TLS_HS_CONNS * 50))
  tls_counted "$sys" h2load_run "$name" "$pg" --h1 -c "$TLS_HS_CONNS" -n "$n" \
    -H 'Connection: close' "$url"
}

# h2load_parse OUTPUT TICKS: the summary of one h2load output (see h2load_run).
h2load_parse() {
  awk -v dt="$2" -v hz="$CLK_TCK" '
    function us(v) {
      if (v ~ /ms$/) return v * 1000; if (v ~ /us$/) return v + 0
      if (v ~ /s$/) return v * 1e6; return v
    }
    /^finished in/ { secs = $3 + 0; if ($3 ~ /ms,$/) secs /= 1000 }
    # 2xx responses count as done; failed (which includes errored and timed
    # out), 4xx and 5xx as errors.
    /^requests:/ { errors += $10 }
    /^status codes:/ { done = $3; errors += $7 + $9 }
    /^time for request:/ { mean = us($6) }
    END {
      if (done == 0) { print "0 0 - - " errors + 0; exit }
      printf "%d %.0f %.0f %.1f %d\n", done, done / secs, mean, dt * 1e6 / hz / done, errors
    }' <<<"$1"
}

# tls_handshakes_h2 NAME PG URL SECONDS: back-to-back h2load runs of
# TLS_HS_CONNS new h2 connections with one request each, for SECONDS. Prints
# what h2load_run prints, summed over the runs.
tls_handshakes_h2() {
  local name=$1 pg=$2 url=$3 secs=$4 t0 t1 start out all=""
  t0=$(group_ticks "$pg")
  start=$(date +%s%N)
  while (($(date +%s%N) - start < secs * 1000000000)); do
    out=$(taskset -c "$LOAD_CPU" timeout 60 h2load -t1 -c "$TLS_HS_CONNS" -n "$TLS_HS_CONNS" \
      "$url" 2>&1) \
      || die "h2load failed ($name): $(tail -3 <<<"$out")"
    all+="$out"$'\n'
  done
  t1=$(group_ticks "$pg")
  printf '%s\n' "$all" >>"$WORK/h2load-$name.txt"
  awk -v dt=$((t1 - t0)) -v hz="$CLK_TCK" -v wall="$((($(date +%s%N) - start) / 1000))" '
    function us(v) {
      if (v ~ /ms$/) return v * 1000; if (v ~ /us$/) return v + 0
      if (v ~ /s$/) return v * 1e6; return v
    }
    /^requests:/ { errors += $10 }
    /^status codes:/ { done += $3; errors += $7 + $9 }
    /^time for connect:/ { mean += us($6); runs++ }
    END {
      if (done == 0) { print "0 0 - - " errors + 0; exit }
      printf "%d %.0f %.0f %.1f %d\n", done, done / (wall / 1e6), mean / runs,
        dt * 1e6 / hz / done, errors
    }' <<<"$all"
}

# tls_idle_run SYSTEM CONNS: TLS_IDLE_STREAMS idle SSE streams over CONNS h2
# connections on a fresh SYSTEM (unpoll-sse or nchan). Appends "system conns
# opened failed kib_per_stream" to $WORK/tls-idle.rows.
tls_idle_run() {
  local sys=$1 conns=$2 rss0 rss1 client i line
  if ! tls_start "$sys"; then
    printf '%s %s unpoll-missing\n' "$sys" "$conns" >>"$WORK/tls-idle.rows"
    TLS_MISSING="unpoll not measured: $UNPOLL_WHY"
    log "$TLS_MISSING"
    return
  fi
  sleep 1 # let the fresh server settle before its baseline RSS
  rss0=$(group_rss_kib "$SYS_PG")
  log "idle h2 streams: $sys, $TLS_IDLE_STREAMS streams over $conns connections"
  start "h2idle-$sys-$conns" "$LOAD_CPU" "$ROOT/target/release/examples/bench-h2-idle" \
    --url "$SYS_URL/sub/c$RANDOM" --ca "$TLS_CERT" --streams "$TLS_IDLE_STREAMS" \
    --connections "$conns" --hold 5s
  client=$START_PID
  for ((i = 0; i < 1200; i++)); do
    grep -q '^opened' "$WORK/h2idle-$sys-$conns.log" 2>/dev/null && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1.5 # mid-hold: every stream open and idle
  rss1=$(group_rss_kib "$SYS_PG")
  line=$(grep '^opened' "$WORK/h2idle-$sys-$conns.log") || {
    log "bench-h2-idle against $sys opened nothing: $(grep -m1 -A2 '^Error' "$WORK/h2idle-$sys-$conns.log" | tr '\n' ' ')"
    line="opened 0 $TLS_IDLE_STREAMS"
  }
  stop "$client"
  stop "$SYS_PG"
  awk -v sys="$sys" -v c="$conns" -v d=$((rss1 - rss0)) '{
    printf "%s %d %d %d %.2f\n", sys, c, $2, $3, ($2 > 0 ? d / $2 : 0)
  }' <<<"$line" >>"$WORK/tls-idle.rows"
}

bench_tls() {
  NCHAN_MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
  ensure_deps nginx:nginx "libnginx-mod-nchan:$NCHAN_MODULE" nghttp2-client:h2load \
    openssl:openssl util-linux:taskset curl:curl iproute2:ss
  build
  tls_cert
  start_upstream upstream
  TLS_MISSING=""
  : >"$WORK/tls-idle.rows"
  local systems=(nginx unpoll floor) sys run url
  for sys in nginx unpoll floor; do
    if ! tls_start "$sys"; then
      TLS_MISSING="unpoll not measured: $UNPOLL_WHY"
      log "$TLS_MISSING"
      systems=(nginx)
      break
    fi
    printf -v "TLS_${sys^^}_PG" '%s' "$SYS_PG"
    printf -v "TLS_${sys^^}_URL" '%s' "$SYS_URL"
    printf -v "TLS_${sys^^}_PLAIN_PG" '%s' "$SYS_PLAIN_PG"
    printf -v "TLS_${sys^^}_PLAIN_URL" '%s' "$SYS_PLAIN_URL"
  done

  local pg_var url_var pg
  for ((run = 1; run <= RUNS; run++)); do
    for sys in "${systems[@]}"; do
      pg_var="TLS_${sys^^}_PG" url_var="TLS_${sys^^}_URL"
      pg=${!pg_var} url="${!url_var}/api/items"
      log "run $run/$RUNS: $sys (${WARMUP}s warm-up, ${DURATION}s measured per mode)"
      # The floor is not measured on hs-h1: h2load stops a client after hyper-util's
      # server closes a `Connection: close` TLS connection, where it reconnects after
      # nginx's and unpoll's (not looked into: handshakes are not the floor's question).
      [[ $sys == floor ]] \
        || tls_handshakes_h1 "$sys" "$sys-hs-h1" "$pg" "$url" "$DURATION" >>"$WORK/tls-$sys-hs-h1.runs"
      tls_counted "$sys" tls_handshakes_h2 "$sys-hs-h2" "$pg" "$url" "$DURATION" \
        >>"$WORK/tls-$sys-hs-h2.runs"
      h2load_run "$sys-warmup" "$pg" --h1 -c "$CONNS" -D "$WARMUP" "$url" >/dev/null
      h2load_run "$sys-h1" "$pg" --h1 -c "$CONNS" -D "$DURATION" "$url" >>"$WORK/tls-$sys-h1.runs"
      h2load_run "$sys-warmup" "$pg" -c "$TLS_H2_CONNS" -m "$TLS_H2_STREAMS" -D "$WARMUP" \
        "$url" >/dev/null
      h2load_run "$sys-h2" "$pg" -c "$TLS_H2_CONNS" -m "$TLS_H2_STREAMS" -D "$DURATION" \
        "$url" >>"$WORK/tls-$sys-h2.runs"
      pg_var="TLS_${sys^^}_PLAIN_PG" url_var="TLS_${sys^^}_PLAIN_URL"
      pg=${!pg_var} url="${!url_var}/api/items"
      h2load_run "$sys-warmup" "$pg" --h1 -c "$CONNS" -D "$WARMUP" "$url" >/dev/null
      h2load_run "$sys-h1-plain" "$pg" --h1 -c "$CONNS" -D "$DURATION" "$url" \
        >>"$WORK/tls-$sys-h1-plain.runs"
    done
  done
  for sys in "${systems[@]}"; do
    pg_var="TLS_${sys^^}_PG"
    stop "${!pg_var}"
    pg_var="TLS_${sys^^}_PLAIN_PG"
    stop "${!pg_var}"
  done

  local conns
  for conns in $TLS_IDLE_CONNS; do
    for sys in unpoll-sse nchan; do tls_idle_run "$sys" "$conns"; done
  done
  tls_report "${systems[@]}" | tee "$RESULTS/tls.txt"
}

# tls_report SYSTEM...: the tables (medians over RUNS) and the ratios.
tls_report() {
  local sys mode col
  echo
  echo "== TLS benchmark (issue 12), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(machine_summary)"
  echo "method: server alone on CPU $PROXY_CPU (unpoll 1 worker, nginx 1 worker); h2load -t1 and the"
  echo "        upstream share CPU $LOAD_CPU; certificate: self-signed $TLS_KEY ($TLS_KEY_DESC), the same file"
  echo "        for both; $(h2load_tls_line)"
  echo "        hs-h1: new TLS connection per request, ALPN http/1.1, h2load --h1 -c$TLS_HS_CONNS"
  echo "               with 'Connection: close' (h2load reconnects), -n sized to ~${DURATION}s by a"
  echo "               calibration run of 50 per client (the warm-up);"
  echo "        hs-h2: new TLS connection per request, ALPN h2, back-to-back h2load -c$TLS_HS_CONNS"
  echo "               -n$TLS_HS_CONNS runs for ${DURATION}s (latency column: mean connect time);"
  echo "        h1: h2load --h1 -c$CONNS keep-alive; h2: h2load -c$TLS_H2_CONNS -m$TLS_H2_STREAMS;"
  echo "        h1-plain: as h1 without TLS (nginx: a plain listen in the same server; unpoll: a"
  echo "                  second instance without [tls]), the baseline that isolates TLS's cost;"
  echo "        floor: bench-hyper-floor, hyper + tokio + rustls (ring) with nothing else, 1 worker:"
  echo "               the least CPU per request this stack can cost;"
  echo "        ${WARMUP}s warm-up then ${DURATION}s measured, median of $RUNS runs; 1 KiB JSON GET proxied"
  echo "        to bench-upstream over plain HTTP/1.1 keep-alive;"
  echo "        CPU us/op = server utime+stime over the run / requests (handshakes in hs-*);"
  echo "        conns/req (hs-*) = connections the server counted (unpoll_tls_handshakes_total,"
  echo "        nginx stub_status accepts) / requests: 1.0 when each request had its own handshake"
  printf '%-7s %-8s %9s %10s %11s %10s %7s %10s\n' system mode 'ops/s' 'mean us' 'CPU us/op' \
    'ops/s/core' errors 'conns/req'
  for mode in hs-h1 hs-h2 h1 h2 h1-plain; do
    for sys in "$@"; do
      [[ -e $WORK/tls-$sys-$mode.runs ]] || continue
      local -a m=()
      for col in 2 3 4 5 6; do
        m+=("$(awk -v c=$col '$c != "-" && $c != "" {print $c}' "$WORK/tls-$sys-$mode.runs" | median)")
      done
      local cap=-
      [[ ${m[2]} == - ]] || cap=$(awk -v c="${m[2]}" 'BEGIN {printf "%.0f", 1e6 / c}')
      printf '%-7s %-8s %9.0f %10s %11s %10s %7s %10s\n' "$sys" "$mode" "${m[0]}" "${m[1]}" \
        "${m[2]}" "$cap" "${m[3]}" "${m[4]}"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$sys" "$mode" "${m[@]}" >>"$RESULTS/tls.tsv"
    done
  done
  if [[ " $* " == *" unpoll "* ]]; then
    awk -F'\t' '{rate[$1, $2] = $3; cpu[$1, $2] = $5}
      END {
        split("hs-h1 hs-h2 h1 h2", modes, " ")
        for (i = 1; i <= 4; i++) {
          m = modes[i]
          printf "unpoll/nginx %-5s: CPU/op %.2fx (target <= 1.0x), ops/s %.2fx; unpoll %.1f, nginx %.1f us/op\n",
            m, cpu["unpoll", m] / cpu["nginx", m], rate["unpoll", m] / rate["nginx", m],
            cpu["unpoll", m], cpu["nginx", m]
        }
        printf "TLS cost per h1 request (h1 - h1-plain CPU us/req): unpoll %.1f, nginx %.1f\n",
          cpu["unpoll", "h1"] - cpu["unpoll", "h1-plain"], cpu["nginx", "h1"] - cpu["nginx", "h1-plain"]
        printf "unpoll/nginx h1-plain: CPU/op %.2fx (plain HTTP, same run)\n",
          cpu["unpoll", "h1-plain"] / cpu["nginx", "h1-plain"]
        if (("floor", "h1") in cpu) {
          split("hs-h1 hs-h2 h1 h2 h1-plain", all, " ")
          for (i = 1; i <= 5; i++) {
            m = all[i]
            if (!(cpu["floor", m] > 0)) continue
            printf "floor/nginx %-8s: CPU/op %.2fx; unpoll/floor %.2fx (unpoll'"'"'s own %.1f us of %.1f)\n",
              m, cpu["floor", m] / cpu["nginx", m], cpu["unpoll", m] / cpu["floor", m],
              cpu["unpoll", m] - cpu["floor", m], cpu["unpoll", m]
          }
        }
      }' "$RESULTS/tls.tsv"
  fi
  echo
  echo "idle h2 SSE streams: $TLS_IDLE_STREAMS EventSource GETs (bench-h2-idle, CPU $LOAD_CPU) over C"
  echo "        h2 connections on one channel, held idle; max concurrent streams per connection"
  echo "        $TLS_MAX_STREAMS on both sides (unpoll [tls] max_concurrent_streams, nginx"
  echo "        http2_max_concurrent_streams); KiB/stream = server RSS with the streams open minus"
  echo "        before (fresh server), / streams open: includes each stream's share of its connection"
  printf '%-10s %6s %8s %7s %11s\n' system conns opened failed 'KiB/stream'
  awk '$3 == "unpoll-missing" { printf "%-10s %6d %s\n", $1, $2, $3; next }
    { printf "%-10s %6d %8d %7d %11s\n", $1, $2, $3, $4, $5 }' "$WORK/tls-idle.rows"
  awk '{ k[$1, $2] = $5 } END {
    split("'"$TLS_IDLE_CONNS"'", cs, " ")
    for (i in cs) if (k["unpoll-sse", cs[i]] != "" && k["nchan", cs[i]] > 0)
      printf "unpoll/nchan idle KiB/stream over %d connections: %.2fx (target <= 4 KiB: %s)\n",
        cs[i], k["unpoll-sse", cs[i]] / k["nchan", cs[i]], k["unpoll-sse", cs[i]]
  }' "$WORK/tls-idle.rows"
  [[ -z $TLS_MISSING ]] || echo "$TLS_MISSING"
}

# h2load_tls_line: the protocol, cipher and key exchange h2load negotiated with
# each server (from its h2 proxy runs), so both are seen to do the same work.
h2load_tls_line() {
  local sys f
  for sys in nginx unpoll; do
    f="$WORK/h2load-$sys-h2.txt"
    [[ -e $f ]] || continue
    awk -v sys="$sys" '/^TLS Protocol:/ {p = $3} /^Cipher:/ {c = $2}
      /^Server Temp Key:/ {k = $4 " " $5} END { printf "%s: %s %s %s; ", sys, p, c, k }' "$f"
  done
  echo
}
