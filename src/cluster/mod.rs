//! Several unpoll instances sharing channels, history and purges through Redis (`[cluster]`).

pub mod config;
