//! `[[watch]]` rules: an unchanged polling endpoint becomes a stream of its body.
//!
//! `config.rs` the rule (and the cache rule its polls are served by).
pub mod config;

pub use config::{RawWatchRule, WatchRule};
