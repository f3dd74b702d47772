# Memory bounds (issue 4's targets) on the real binary, release build: an idle SSE
# subscriber, on a fresh and on a reused connection, and a connection without a
# request yet each cost at most 4 KiB of RSS; so does an idle h2 event stream over TLS,
# its share of the connection included (issue 12: 10,000 streams over 100 and over 10
# connections, tests/tls.rs). RSS thresholds move with the allocator
# and the machine's load, so they run here rather than in `cargo test`'s default
# suite: the `#[ignore]`d tests of tests/lifecycle.rs and tests/tls.rs. Sourced by
# benches/run.

bench_memory() {
  log "memory: the ignored RSS tests of tests/lifecycle.rs, release build"
  (cd "$ROOT" && cargo test --release --test lifecycle -- --ignored --nocapture \
    cost_at_most_4_kib_each) 2>&1 | tee "$WORK/memory.txt"
  log "memory: idle h2 streams over TLS, the ignored RSS test of tests/tls.rs, release build"
  (cd "$ROOT" && cargo test --release --test tls -- --ignored --nocapture \
    idle_h2_streams_cost_at_most_4_kib_each) 2>&1 | tee -a "$WORK/memory.txt"
}
