# MQTT fan-out benchmark (issue 14): one MQTT message → MQTT_SUBSCRIBERS SSE
# subscribers of one channel, through unpoll's [mqtt] + [[topic]] source.
# Measured in the same run against unpoll's own HTTP `POST /publish` to the
# same subscribers, so the cost of the MQTT hop (publisher → broker → unpoll's
# MQTT connection) is visible; and MQTT → WebSocket subscribers of the same
# rule. Sourced by benches/run.
#
# The broker: a private Mosquitto (the Debian package, persistence off) on a
# free port, on LOAD_CPU with the clients (MQTT_BROKER_CPU), unless MQTT_URL names one. Not the
# machine's shared broker on 1883 by default: unpoll keeps a persistent session
# (clean session off) under its client id, which every run would leave behind
# on a shared broker, the other jobs' MQTT tests publish there too, and a
# private broker's CPU time can be read from /proc.

MQTT_SUBSCRIBERS=${MQTT_SUBSCRIBERS:-1000}
MQTT_MESSAGES=${MQTT_MESSAGES:-50}
MQTT_INTERVAL=${MQTT_INTERVAL:-100ms}
MQTT_SYSTEMS=${MQTT_SYSTEMS:-"http mqtt mqtt-ws"}
# Where the private broker runs: with the clients by default, as the upstream
# is in the other benchmarks, so unpoll has its core alone.
MQTT_BROKER_CPU=${MQTT_BROKER_CPU:-$LOAD_CPU}
# 1 (default): bench-sse publishes from a thread of its own (--publisher-thread), for
# every row alike, instead of from the thread its subscriber tasks run on.
MQTT_PUBLISHER_THREAD=${MQTT_PUBLISHER_THREAD:-1}

# The same config for every row: [mqtt] is connected (and /readyz waits for
# its SUBACK) even in the HTTP rows, so the only difference is the publish
# path. Caps lifted as in the fan-out benchmark (all subscribers come from
# 127.0.0.1 and share one channel).
UNPOLL_MQTT_CONF="$UNPOLL_FANOUT_BASE"'[mqtt]
url = "BROKER"
client_id = "CLIENT_ID"
[[topic]]
topic = "bench/{name}"
channel = "{topic.name}"
event = "m"
qos = 1
[[stream]]
path = "/sub/{channel}"
channels = ["{path.channel}"]
auth = "none"'

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_mosquitto: a private broker on MQTT_BROKER_CPU; sets MOSQUITTO_PG and MQTT_BROKER.
start_mosquitto() {
  local port dir i
  port=$(free_port)
  dir="$WORK/mosquitto"
  mkdir -p "$dir"
  # Mosquitto started as root drops to its own user after reading the config.
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" \
    >"$dir/mosquitto.conf"
  chmod 755 "$WORK" "$dir"
  start mosquitto "$MQTT_BROKER_CPU" mosquitto -c "$dir/mosquitto.conf"
  MOSQUITTO_PG=$START_PID
  for ((i = 0; i < 100; i++)); do
    listening "$port" && break
    kill -0 "$MOSQUITTO_PG" 2>/dev/null || break
    sleep 0.05
  done
  listening "$port" || die "mosquitto did not start: $(tail -n 5 "$WORK/mosquitto.log")"
  MQTT_BROKER="mqtt://127.0.0.1:$port"
}

# mqtt_run ROW RUN: one measured run of ROW (http | mqtt | mqtt-ws) on a fresh
# unpoll and a fresh channel. Appends "row run connected delivered p50 p99 max
# retries publish_errors unpoll_us_per_event broker_us_per_msg" to
# $WORK/mqtt.rows.
mqtt_run() {
  local row=$1 run=$2 conf chan transport=sse flavour pub_url out res
  conf=${UNPOLL_MQTT_CONF/UPSTREAM/$UPSTREAM_URL}
  conf=${conf/BROKER/$MQTT_BROKER}
  # A fresh session per run: nothing queued from an earlier run.
  conf=${conf/CLIENT_ID/unpoll-bench-$$-$row-$run}
  if ! start_unpoll unpoll "$conf"; then
    die "unpoll did not start with [mqtt] at $MQTT_BROKER: $UNPOLL_WHY"
  fi
  chan="c$RANDOM"
  case $row in
    http) flavour=unpoll pub_url="$UNPOLL_ADMIN/publish" ;;
    mqtt | mqtt-ws) flavour=mqtt pub_url=$MQTT_BROKER ;;
    *) die "unknown MQTT_SYSTEMS row $row (want http, mqtt or mqtt-ws)" ;;
  esac
  [[ $row == mqtt-ws ]] && transport=websocket
  local extra=()
  [[ $MQTT_PUBLISHER_THREAD == 1 ]] && extra+=(--publisher-thread)
  out="$WORK/mqtt-$row-$run.txt"
  log "mqtt: $row run $run/$RUNS, $MQTT_SUBSCRIBERS subscribers, $MQTT_MESSAGES messages $MQTT_INTERVAL apart"
  start "sse-mqtt-$row-$run" "$LOAD_CPU" "$ROOT/target/release/examples/bench-sse" \
    --url "$UNPOLL_URL/sub/$chan" --subscribers "$MQTT_SUBSCRIBERS" \
    --messages "$MQTT_MESSAGES" --interval "$MQTT_INTERVAL" --hold 1s \
    --publish-url "$pub_url" --publish "$flavour" --channel "$chan" --topic "bench/$chan" \
    --token bench --transport "$transport" "${extra[@]}"
  local client=$START_PID i t0 t1 b0=0 b1=0
  for ((i = 0; i < 1200; i++)); do
    grep -q '^connected' "$WORK/sse-mqtt-$row-$run.log" 2>/dev/null && break
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  # From the idle hold to the end: the publishes and deliveries, not the
  # connecting.
  t0=$(group_cpu_ns "$UNPOLL_PG")
  [[ -n ${MOSQUITTO_PG:-} ]] && b0=$(group_cpu_ns "$MOSQUITTO_PG")
  for ((i = 0; i < 1200; i++)); do
    kill -0 "$client" 2>/dev/null || break
    sleep 0.1
  done
  t1=$(group_cpu_ns "$UNPOLL_PG")
  [[ -n ${MOSQUITTO_PG:-} ]] && b1=$(group_cpu_ns "$MOSQUITTO_PG")
  stop "$client"
  cp "$WORK/sse-mqtt-$row-$run.log" "$out"
  res=$(grep '^RESULT ' "$out") || res=""
  awk -v row="$row" -v run="$run" -v res="$res" -v broker="${MOSQUITTO_PG:+1}" \
    -v cpu_us=$(((t1 - t0) / 1000)) -v broker_us=$(((b1 - b0) / 1000)) 'BEGIN {
    if (res == "") { printf "%s %d failed\n", row, run; exit }
    split(res, f, " ")
    for (i in f) { split(f[i], kv, "="); v[kv[1]] = kv[2] }
    printf "%s %d %d %.4f %.1f %.1f %.1f %d %d %.1f %s\n", row, run, v["connected"],
      v["delivered"], v["p50_us"] / 1000, v["p99_us"] / 1000, v["max_us"] / 1000,
      v["retries"], v["publish_errors"],
      (v["received"] > 0 ? cpu_us / v["received"] : 0),
      (row == "http" || broker == "" ? "-" : sprintf("%.1f", broker_us / v["messages"]))
  }' >>"$WORK/mqtt.rows"
  stop "$UNPOLL_PG"
}

bench_mqtt() {
  local deps=(util-linux:taskset curl:curl iproute2:ss)
  [[ -n ${MQTT_URL:-} ]] || deps+=(mosquitto:mosquitto)
  ensure_deps "${deps[@]}"
  build
  start_upstream upstream
  MOSQUITTO_PG=""
  if [[ -n ${MQTT_URL:-} ]]; then
    MQTT_BROKER=$MQTT_URL
  else
    start_mosquitto
  fi
  local run row
  # Rows interleaved within each run, so a change of the machine's load
  # touches every row alike.
  for ((run = 1; run <= RUNS; run++)); do
    for row in $MQTT_SYSTEMS; do mqtt_run "$row" "$run"; done
  done
  mqtt_report | tee "$RESULTS/mqtt.txt"
}

mqtt_report() {
  echo
  echo "== MQTT fan-out benchmark (issue 14), $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine: $(machine_summary)"
  echo "broker: ${MQTT_URL:-private $(mosquitto -h 2>/dev/null | head -n 1 | sed 's/ is an.*//'), CPU $MQTT_BROKER_CPU}"
  echo "method: one channel, $MQTT_SUBSCRIBERS subscribers (bench-sse, 1 thread, CPU $LOAD_CPU),"
  echo "        $MQTT_MESSAGES messages $MQTT_INTERVAL apart carrying their publish time; unpoll on CPU $PROXY_CPU;"
  echo "        http: POST /publish on the admin listener, a new connection per message;"
  echo "        mqtt: QoS 1 PUBLISH on one connection to the broker, [[topic]] rule at QoS 1;"
  echo "        mqtt-ws: the same, WebSocket subscribers; latency = publish call → event parsed;"
  [[ $MQTT_PUBLISHER_THREAD != 1 ]] || echo "        publisher on a thread of its own (--publisher-thread)"
  echo "        CPU us/ev = unpoll's CPU (schedstat, all threads) from the idle hold to the end"
  echo "        / events delivered; broker us = Mosquitto's CPU over the same span / messages"
  printf '%-8s %4s %9s %9s %8s %8s %8s %8s %8s %10s %11s\n' row run connected delivered \
    'p50 ms' 'p99 ms' 'max ms' retries 'pub err' 'CPU us/ev' 'broker us'
  awk '$3 == "failed" { printf "%-8s %4d %s\n", $1, $2, $3; next }
    { printf "%-8s %4d %9d %9s %8s %8s %8s %8s %8s %10s %11s\n", $1, $2, $3, $4, $5, $6, $7,
      $8, $9, $10, $11 }' "$WORK/mqtt.rows"
  echo
  echo "medians over $RUNS runs:"
  local row
  for row in $MQTT_SYSTEMS; do
    awk -v row="$row" '$1 == row && $3 != "failed"' "$WORK/mqtt.rows" >"$WORK/mqtt-$row.runs"
    printf '%-8s delivered(min) %s p50 %s p99 %s max %s CPU us/ev %s\n' "$row" \
      "$(awk '{print $4}' "$WORK/mqtt-$row.runs" | sort -g | head -n 1)" \
      "$(awk '{print $5}' "$WORK/mqtt-$row.runs" | median)" \
      "$(awk '{print $6}' "$WORK/mqtt-$row.runs" | median)" \
      "$(awk '{print $7}' "$WORK/mqtt-$row.runs" | median)" \
      "$(awk '{print $10}' "$WORK/mqtt-$row.runs" | median)"
  done | tee "$WORK/mqtt.medians"
  awk '{ p50[$1] = $5; p99[$1] = $7; cpu[$1] = $12 }
    END {
      if ("http" in p99 && "mqtt" in p99 && p99["http"] > 0)
        printf "mqtt/http: p50 %.2fx, p99 %.2fx (%+.1f ms), unpoll CPU/event %.2fx\n",
          p50["mqtt"] / p50["http"], p99["mqtt"] / p99["http"], p99["mqtt"] - p99["http"],
          cpu["mqtt"] / cpu["http"]
      if ("mqtt" in p99 && "mqtt-ws" in p99 && p99["mqtt"] > 0)
        printf "mqtt-ws/mqtt: p99 %.2fx, unpoll CPU/event %.2fx\n",
          p99["mqtt-ws"] / p99["mqtt"], cpu["mqtt-ws"] / cpu["mqtt"]
    }' "$WORK/mqtt.medians"
}
