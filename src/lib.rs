//! unpoll: a reverse-proxy sidecar that turns browser polling into push.
#![forbid(unsafe_code)]
