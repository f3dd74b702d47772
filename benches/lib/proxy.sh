# Proxy benchmark (issue 2): plain reverse proxying of a 1 KiB JSON response,
# unpoll vs nginx, with the upstream alone as the ceiling. Sourced by
# benches/run.

NGINX_PROXY_CONF='
  upstream app {
    server UPSTREAM;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:PORT;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }'

UNPOLL_PROXY_CONF='listen = "127.0.0.1:PORT"
upstream = "UPSTREAM"
workers = 1
[admin]
listen = "127.0.0.1:ADMIN_PORT"
[log]
access = false'

bench_proxy() {
  ensure_deps nginx:nginx wrk:wrk util-linux:taskset curl:curl iproute2:ss
  build
  start_upstream upstream
  start_nginx nginx "${NGINX_PROXY_CONF/UPSTREAM/${UPSTREAM_URL#http://}}"
  # The floor: hyper and tokio alone (benches/tools/hyper_floor.rs).
  start_floor floor
  local targets=(upstream nginx floor) missing=""
  if start_unpoll unpoll "${UNPOLL_PROXY_CONF/UPSTREAM/$UPSTREAM_URL}"; then
    targets+=(unpoll)
  else
    missing="unpoll not measured: $UNPOLL_WHY"
    log "$missing"
  fi
  if [[ -n ${BASELINE_BIN:-} ]]; then
    start_unpoll baseline "${UNPOLL_PROXY_CONF/UPSTREAM/$UPSTREAM_URL}" "$BASELINE_BIN" \
      || die "baseline $BASELINE_BIN did not start: $UNPOLL_WHY"
    targets+=(baseline)
  fi

  local run t pg url
  for ((run = 1; run <= RUNS; run++)); do
    for t in "${targets[@]}"; do
      url_var="${t^^}_URL" pg_var="${t^^}_PG"
      url="${!url_var}/api/items" pg=""
      [[ $t == upstream ]] || pg=${!pg_var}
      log "run $run/$RUNS: $t (${WARMUP}s warm-up, ${DURATION}s measured)"
      wrk_run "$t-warmup" "$url" "$WARMUP" >/dev/null
      wrk_run "$t" "$url" "$DURATION" "$pg" >>"$WORK/proxy-$t.runs"
    done
  done
  proxy_report "$missing" "${targets[@]}" | tee "$RESULTS/proxy.txt"
}

# proxy_report MISSING TARGET...: the table (medians over RUNS) and ratios.
proxy_report() {
  local missing=$1; shift
  local t col
  echo
  echo "== proxy benchmark (issue 2), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(machine_summary)"
  echo "method: wrk -t1 -c$CONNS, ${WARMUP}s warm-up then ${DURATION}s measured, median of $RUNS runs;"
  echo "        proxy alone on CPU $PROXY_CPU with 1 worker; wrk and upstream share CPU $LOAD_CPU;"
  echo "        CPU us/req = proxy utime+stime over the run / requests; 1 KiB JSON GET"
  echo "        req/s/core = 1e6 / CPU us per req: what one saturated core would serve"
  echo "        floor = bench-hyper-floor: hyper server + client on tokio, 1 worker, nothing else"
  [[ -z ${BASELINE_BIN:-} ]] || echo "        baseline = unpoll built from another commit: $BASELINE_BIN"
  printf '%-9s %9s %8s %8s %11s %9s %7s %11s\n' target 'req/s' 'p50 us' 'p99 us' 'CPU us/req' \
    'proxy CPU' errors 'req/s/core'
  for t in "$@"; do
    local -a m=()
    for col in 2 3 4 5 6 7; do
      m+=("$(awk -v c=$col '$c != "-" {print $c}' "$WORK/proxy-$t.runs" | median)")
    done
    local cap=-
    [[ ${m[3]} == - ]] || cap=$(awk -v c="${m[3]}" 'BEGIN {printf "%.0f", 1e6 / c}')
    [[ ${m[4]} == - ]] || m[4]+=%
    printf '%-9s %9.0f %8s %8s %11s %9s %7s %11s\n' "$t" "${m[0]}" "${m[1]}" "${m[2]}" "${m[3]}" \
      "${m[4]}" "${m[5]}" "$cap"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "${m[@]}" >>"$RESULTS/proxy.tsv"
  done
  if [[ -n $missing ]]; then
    echo "$missing"
    return
  fi
  awk -F'\t' '{rps[$1] = $2; p99[$1] = $4; cpu[$1] = $5}
    END {
      printf "unpoll/nginx: req/s %.2fx, req/s/core %.2fx (target >= 1.3x), p99 %.2fx " \
        "(target <= 1.0x), CPU/req %.2fx; unpoll %.1f us/req (target <= 20), nginx %.1f us/req\n",
        rps["unpoll"] / rps["nginx"], cpu["nginx"] / cpu["unpoll"], p99["unpoll"] / p99["nginx"],
        cpu["unpoll"] / cpu["nginx"], cpu["unpoll"], cpu["nginx"]
      if ("floor" in cpu)
        printf "floor/nginx: CPU/req %.2fx (%.1f us); unpoll/floor: CPU/req %.2fx " \
          "(unpoll'"'"'s own share %.1f us of %.1f)\n",
          cpu["floor"] / cpu["nginx"], cpu["floor"], cpu["unpoll"] / cpu["floor"],
          cpu["unpoll"] - cpu["floor"], cpu["unpoll"]
      if ("baseline" in cpu)
        printf "unpoll/baseline: CPU/req %.2fx (%.1f vs %.1f us), p99 %.2fx, req/s %.2fx\n",
          cpu["unpoll"] / cpu["baseline"], cpu["unpoll"], cpu["baseline"],
          p99["unpoll"] / p99["baseline"], rps["unpoll"] / rps["baseline"]
    }' "$RESULTS/proxy.tsv"
}
