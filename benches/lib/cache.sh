# Cache benchmark (issue 3): hit throughput and CPU per hit of nginx
# proxy_cache, Varnish and unpoll; and coalescing of K cold concurrent
# requests to a 200 ms upstream, shared and per user (cookies). Sourced by
# benches/run.

CACHE_BURSTS=${CACHE_BURSTS:-"100 500"}
CACHE_USERS=${CACHE_USERS:-10}
SLOW_DELAY=200ms

# Shared entries under /api/, per-user entries (keyed on the Cookie) under
# /user/, for every system.
NGINX_CACHE_CONF='
  proxy_cache_path CACHE_DIR levels=1:2 keys_zone=api:16m max_size=256m
                   inactive=60s use_temp_path=off;
  upstream app {
    server UPSTREAM;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:PORT;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_cache api;
    proxy_cache_valid 200 1s;
    proxy_cache_lock on;
    proxy_cache_lock_timeout 30s;
    location / { proxy_pass http://app; }
    location /user/ {
      proxy_cache_key $scheme$proxy_host$request_uri$http_cookie;
      proxy_pass http://app;
    }
  }'

VARNISH_VCL='vcl 4.1;
backend default { .host = "127.0.0.1"; .port = "UPSTREAM_PORT"; }
sub vcl_recv {
  # The built-in VCL passes requests with a Cookie; per-user entries are
  # cached and keyed on it instead.
  if (req.url ~ "^/user/") { return (hash); }
}
sub vcl_hash {
  if (req.url ~ "^/user/") { hash_data(req.http.Cookie); }
}'

UNPOLL_CACHE_CONF='listen = "127.0.0.1:PORT"
upstream = "UPSTREAM"
workers = 1
[admin]
listen = "127.0.0.1:ADMIN_PORT"
[log]
access = false
[[cache]]
path = "/api/*"
ttl = "1s"
vary = []
[[cache]]
path = "/user/*"
ttl = "1s"
vary = ["Cookie"]'

# start_varnish NAME UPSTREAM_URL: varnishd in the foreground on PROXY_CPU,
# default TTL 1 s, 256 MiB of malloc storage, its work dir under $WORK.
start_varnish() {
  local name=$1 up=$2 port dir
  port=$(free_port)
  dir="$WORK/$name"
  mkdir -p "$dir"
  printf '%s\n' "${VARNISH_VCL/UPSTREAM_PORT/${up##*:}}" >"$dir/default.vcl"
  start "$name" "$PROXY_CPU" varnishd -F -a "127.0.0.1:$port" -f "$dir/default.vcl" \
    -n "$dir/work" -s malloc,256m -t 1 -T none
  wait_http "http://127.0.0.1:$port/_count" "$START_PID" 30 \
    || die "$name did not start: $(tail -n 5 "$WORK/$name.log")"
  printf -v "${name^^}_PG" '%s' "$START_PID"
  printf -v "${name^^}_URL" '%s' "http://127.0.0.1:$port"
}

# cache_system SYSTEM NAME UPSTREAM_URL: start SYSTEM in front of UPSTREAM_URL
# as NAME; sets SYS_PG and SYS_URL. Returns 1 when unpoll cannot run it yet.
cache_system() {
  local sys=$1 name=$2 up=$3 conf
  case $sys in
    nginx)
      mkdir -p "$CACHE_TMP/$name"
      conf=${NGINX_CACHE_CONF/CACHE_DIR/$CACHE_TMP/$name}
      start_nginx "$name" "${conf/UPSTREAM/${up#http://}}"
      ;;
    varnish) start_varnish "$name" "$up" ;;
    unpoll) start_unpoll "$name" "${UNPOLL_CACHE_CONF/UPSTREAM/$up}" || return 1 ;;
    baseline)
      start_unpoll "$name" "${UNPOLL_CACHE_CONF/UPSTREAM/$up}" "$BASELINE_BIN" \
        || die "baseline $BASELINE_BIN did not start: $UNPOLL_WHY"
      ;;
  esac
  local pg_var="${name^^}_PG" url_var="${name^^}_URL"
  SYS_PG=${!pg_var} SYS_URL=${!url_var}
}

upstream_count() { curl -fsS --max-time 5 "$1/_count"; }

# cache_hits SYSTEM: wrk on one shared URL; hits dominate (one miss per TTL).
cache_hits() {
  local sys=$1 run r before after
  cache_system "$sys" "${sys}_hits" "$UPSTREAM_URL" || {
    CACHE_MISSING="unpoll not measured: $UNPOLL_WHY"
    printf '%s unpoll-missing\n' "$sys" >>"$WORK/cache-hits.rows"
    return
  }
  before=$(upstream_count "$UPSTREAM_URL")
  for ((run = 1; run <= RUNS; run++)); do
    log "cache hits: $sys run $run/$RUNS"
    wrk_run "$sys-warmup" "$SYS_URL/api/items" "$WARMUP" >/dev/null
    wrk_run "$sys-hits" "$SYS_URL/api/items" "$DURATION" "$SYS_PG" >>"$WORK/cache-$sys.runs"
  done
  after=$(upstream_count "$UPSTREAM_URL")
  local -a m=()
  for col in 2 3 4 5 6 7; do
    m+=("$(awk -v c=$col '{print $c}' "$WORK/cache-$sys.runs" | median)")
  done
  local total
  total=$(awk '{s += $1} END {print s}' "$WORK/cache-$sys.runs")
  printf '%s %s %s %s %s %s %s %s\n' "$sys" "${m[@]}" "$((after - before))/$total" \
    >>"$WORK/cache-hits.rows"
  stop "$SYS_PG"
}

# cache_burst SYSTEM K USERS: K concurrent cold requests (USERS distinct
# cookies, 0 = none) through SYSTEM to the slow upstream.
cache_burst() {
  local sys=$1 k=$2 users=$3 path before after res
  cache_system "$sys" "${sys}_burst" "$SLOW_URL" || {
    printf '%s %s %s unpoll-missing\n' "$sys" "$k" "$users" >>"$WORK/cache-burst.rows"
    return
  }
  path=/api/cold-$RANDOM
  ((users > 0)) && path=/user/cold-$RANDOM
  before=$(upstream_count "$SLOW_URL")
  log "cache burst: $sys, $k cold requests, $users users"
  res=$(taskset -c "$LOAD_CPU" "$ROOT/target/release/examples/bench-burst" \
    --url "$SYS_URL$path" --requests "$k" --users "$users" 2>>"$WORK/burst-$sys.txt" |
    grep '^RESULT ') || res=""
  after=$(upstream_count "$SLOW_URL")
  printf '%s\n' "$res" >>"$WORK/burst-$sys.txt"
  awk -v sys="$sys" -v k="$k" -v u="$users" -v up=$((after - before)) -v res="$res" 'BEGIN {
    if (res == "") { printf "%s %d %d failed\n", sys, k, u; exit }
    split(res, f, " "); for (i in f) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
    printf "%s %d %d %d %d %d %.1f %.1f %.1f\n", sys, k, u, up, (u > 0 ? u : 1),
      v["non_2xx"] + v["errors"], v["p50_us"] / 1000, v["p99_us"] / 1000, v["max_us"] / 1000
  }' >>"$WORK/cache-burst.rows"
  stop "$SYS_PG"
}

bench_cache() {
  ensure_deps nginx:nginx varnish:varnishd wrk:wrk util-linux:taskset curl:curl iproute2:ss
  build
  CACHE_TMP=$(mktemp -d /dev/shm/unpoll-bench-cache.XXXXXX)
  # nginx workers and the Varnish child drop root: let them reach their dirs.
  chmod 711 "$CACHE_TMP" "$WORK"
  CACHE_MISSING=""
  start_upstream upstream
  start_upstream slow --delay "$SLOW_DELAY"
  local sys k systems=${CACHE_SYSTEMS:-nginx varnish unpoll}
  [[ -z ${BASELINE_BIN:-} || -n ${CACHE_SYSTEMS:-} ]] || systems+=" baseline"
  for sys in $systems; do cache_hits "$sys"; done
  for sys in $systems; do
    for k in $CACHE_BURSTS; do
      cache_burst "$sys" "$k" 0
      cache_burst "$sys" "$k" "$CACHE_USERS"
    done
  done
  rm -rf "$CACHE_TMP"
  cache_report | tee "$RESULTS/cache.txt"
}

cache_report() {
  echo
  echo "== cache benchmark (issue 3), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(machine_summary)"
  echo "method: hits: wrk -t1 -c$CONNS on one shared URL (TTL 1 s), ${WARMUP}s warm-up then"
  echo "        ${DURATION}s measured, median of $RUNS runs; cache alone on CPU $PROXY_CPU, 1 worker"
  echo "        (Varnish: its default thread pools, on that one CPU); wrk + upstream on CPU $LOAD_CPU"
  [[ -z ${BASELINE_BIN:-} ]] || echo "        baseline = unpoll built from another commit: $BASELINE_BIN"
  printf '%-8s %9s %8s %8s %11s %9s %7s %14s\n' system 'req/s' 'p50 us' 'p99 us' \
    'CPU us/req' 'CPU' errors 'upstream/reqs'
  awk '$2 == "unpoll-missing" { printf "%-8s %s\n", $1, $2; next }
    { printf "%-8s %9.0f %8s %8s %11s %8s%% %7s %14s\n", $1, $2, $3, $4, $5, $6, $7, $8 }' \
    "$WORK/cache-hits.rows"
  # Capacity ratios: req/s/core = 1e6 / CPU us per hit.
  awk '$2 != "unpoll-missing" { cpu[$1] = $5; rps[$1] = $2 }
    END {
      if (!("unpoll" in cpu)) exit
      if ("nginx" in cpu) printf "unpoll/nginx: req/s %.2fx, req/s/core %.2fx\n",
        rps["unpoll"] / rps["nginx"], cpu["nginx"] / cpu["unpoll"]
      if ("varnish" in cpu) printf "unpoll/varnish: req/s %.2fx, req/s/core %.2fx\n",
        rps["unpoll"] / rps["varnish"], cpu["varnish"] / cpu["unpoll"]
      if ("baseline" in cpu) printf "unpoll/baseline: CPU/hit %.2fx (%.1f vs %.1f us)\n",
        cpu["unpoll"] / cpu["baseline"], cpu["unpoll"], cpu["baseline"]
    }' "$WORK/cache-hits.rows"
  echo
  echo "coalescing: K requests at once for one cold URL, upstream answers in $SLOW_DELAY;"
  echo "            users > 0: request i has Cookie user=u(i mod users), keyed per user"
  printf '%-8s %5s %6s %9s %9s %7s %8s %8s %8s\n' system K users 'upstream' 'expected' errors \
    'p50 ms' 'p99 ms' 'max ms'
  awk '$4 == "unpoll-missing" || $4 == "failed" { printf "%-8s %5d %6d %s\n", $1, $2, $3, $4; next }
    { printf "%-8s %5d %6d %9d %9d %7d %8s %8s %8s\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }' \
    "$WORK/cache-burst.rows"
  [[ -z $CACHE_MISSING ]] || echo "$CACHE_MISSING"
}
