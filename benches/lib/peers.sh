# Starting the systems under test, each as our own process on 127.0.0.1 with
# its own config under $WORK. Sourced by benches/run. Each start_* function
# sets <NAME>_PG (process group, for CPU accounting and stop) and <NAME>_URL.

# start_upstream NAME [ARGS...]: the fast 1 KiB JSON upstream on LOAD_CPU.
start_upstream() {
  local name=$1 port; shift
  port=$(free_port)
  start "$name" "$LOAD_CPU" "$ROOT/target/release/examples/bench-upstream" \
    --listen "127.0.0.1:$port" "$@"
  wait_http "http://127.0.0.1:$port/_count" "$START_PID" || die "$name did not start"
  printf -v "${name^^}_PG" '%s' "$START_PID"
  printf -v "${name^^}_URL" '%s' "http://127.0.0.1:$port"
}

# start_floor NAME [--cert PEM --key PEM]: bench-hyper-floor (hyper and tokio alone, one
# worker) on PROXY_CPU in front of the upstream; sets NAME_PG and NAME_URL (https with
# --cert). Its CPU per request is the floor under unpoll's on this stack.
start_floor() {
  local name=$1 port scheme=http; shift
  [[ $# -eq 0 ]] || scheme=https
  port=$(free_port)
  start "$name" "$PROXY_CPU" "$ROOT/target/release/examples/bench-hyper-floor" \
    --listen "127.0.0.1:$port" --upstream "${UPSTREAM_URL#http://}" "$@"
  wait_http "$scheme://127.0.0.1:$port/_count" "$START_PID" || die "$name did not start"
  printf -v "${name^^}_PG" '%s' "$START_PID"
  printf -v "${name^^}_URL" '%s' "$scheme://127.0.0.1:$port"
}

# start_nginx NAME HTTP_BLOCK_BODY [READY_PATH]: nginx, one worker, on PROXY_CPU. The body
# goes inside `http { }`; the literal PORT in it is replaced by the chosen port.
# NGINX_SCHEME=https when the body's server listens with ssl.
start_nginx() {
  local name=$1 body=$2 ready=${3:-/_count} port dir scheme=${NGINX_SCHEME:-http}
  port=$(free_port)
  dir="$WORK/$name"
  mkdir -p "$dir/logs"
  cat >"$dir/nginx.conf" <<CONF
${NGINX_LOAD_MODULES:-}
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections ${NGINX_MAX_FILES:-19500}; }
worker_rlimit_nofile ${NGINX_MAX_FILES:-19500};
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
${body//PORT/$port}
}
CONF
  start "$name" "$PROXY_CPU" nginx -p "$dir" -e "$dir/logs/error.log" \
    -c "$dir/nginx.conf" -g 'daemon off;'
  wait_http "$scheme://127.0.0.1:$port$ready" "$START_PID" \
    || die "$name did not start: $(tail -n 3 "$dir/logs/error.log" "$WORK/$name.log")"
  printf -v "${name^^}_PG" '%s' "$START_PID"
  printf -v "${name^^}_URL" '%s' "$scheme://127.0.0.1:$port"
}

# start_unpoll NAME TOML [BINARY]: unpoll (this checkout's release build, or
# BINARY) on PROXY_CPU. In TOML, the literal PORT and ADMIN_PORT are replaced
# by chosen ports. Returns 1 (with UNPOLL_WHY set) when unpoll cannot run
# this config yet, so callers can report the gap.
start_unpoll() {
  local name=$1 toml=$2 bin=${3:-$ROOT/target/release/unpoll} port admin
  port=$(free_port)
  admin=$(free_port)
  toml=${toml//ADMIN_PORT/$admin}
  printf '%s\n' "${toml//PORT/$port}" >"$WORK/$name.toml"
  start "$name" "$PROXY_CPU" "$bin" --config "$WORK/$name.toml"
  if ! wait_http "http://127.0.0.1:$admin/readyz" "$START_PID" 15; then
    UNPOLL_WHY="did not answer /readyz: $(tail -c 300 "$WORK/$name.log" | tr '\n' ' ')"
    [[ -z $(tail -c 300 "$WORK/$name.log") ]] && UNPOLL_WHY="exited without output (no server on this branch yet)"
    stop "$START_PID"
    return 1
  fi
  printf -v "${name^^}_PG" '%s' "$START_PID"
  printf -v "${name^^}_URL" '%s' "http://127.0.0.1:$port"
  printf -v "${name^^}_ADMIN" '%s' "http://127.0.0.1:$admin"
}
