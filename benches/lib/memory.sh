# Memory bounds (issue 4's targets) on the real binary, release build: an idle SSE
# subscriber, on a fresh and on a reused connection, and a connection without a
# request yet each cost at most 4 KiB of RSS. RSS thresholds move with the allocator
# and the machine's load, so they run here rather than in `cargo test`'s default
# suite: the `#[ignore]`d tests of tests/lifecycle.rs. Sourced by benches/run.

bench_memory() {
  log "memory: the ignored RSS tests of tests/lifecycle.rs, release build"
  (cd "$ROOT" && cargo test --release --test lifecycle -- --ignored --nocapture \
    cost_at_most_4_kib_each) 2>&1 | tee "$WORK/memory.txt"
}
