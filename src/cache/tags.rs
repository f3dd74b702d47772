//! Purge by tag without an index of keys: every purge takes a generation number, and an
//! entry is valid only while none of its tags was purged at or after the generation its
//! fill started in. A fill racing a purge therefore can never be stored as valid.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::hub::glob;

/// Distinct purged tags remembered. Full policy: forget them all and raise the floor, which
/// invalidates every tagged entry filled before — over-purging, never under-purging.
const MAX_TAGS: usize = 100_000;
/// Glob purges remembered (Postgres reconnects purge `reservas:*`). Full policy: as above.
const MAX_GLOBS: usize = 256;

/// Generations of purged tags.
#[derive(Default)]
pub struct TagGenerations {
    /// The last generation handed out; a fill records it before going upstream.
    counter: AtomicU64,
    /// Tag or glob → generation of its last purge, plus the floor every forgotten tag gets.
    purged: RwLock<Purged>,
}

#[derive(Default)]
struct Purged {
    tags: HashMap<String, u64>,
    globs: Vec<(String, u64)>,
    floor: u64,
}

impl TagGenerations {
    /// The generation a fill starting now belongs to.
    pub fn current(&self) -> u64 {
        self.counter.load(Ordering::Acquire)
    }

    /// Purge `tags`: every entry carrying one of them and filled before now becomes invalid.
    pub fn purge(&self, tags: &[String]) {
        let mut p = self.purged.write().unwrap_or_else(|e| e.into_inner());
        let generation = self.counter.fetch_add(1, Ordering::AcqRel) + 1;
        if p.tags.len() + tags.len() > MAX_TAGS {
            p.tags.clear();
            p.floor = generation;
        }
        for tag in tags {
            p.tags.insert(tag.clone(), generation);
        }
    }

    /// Purge every tag matching `pattern` (`*` matches any run of characters).
    pub fn purge_glob(&self, pattern: &str) {
        let mut p = self.purged.write().unwrap_or_else(|e| e.into_inner());
        let generation = self.counter.fetch_add(1, Ordering::AcqRel) + 1;
        if p.globs.len() >= MAX_GLOBS {
            p.globs.clear();
            p.tags.clear();
            p.floor = generation;
        }
        p.globs.retain(|(g, _)| g != pattern);
        p.globs.push((pattern.to_string(), generation));
    }

    /// Is an entry with `tags`, filled in generation `filled`, still valid?
    pub fn valid(&self, tags: &[String], filled: u64) -> bool {
        if tags.is_empty() {
            return true;
        }
        let p = self.purged.read().unwrap_or_else(|e| e.into_inner());
        tags.iter().all(|tag| {
            let generation = p.tags.get(tag).copied().unwrap_or(p.floor);
            generation <= filled
                && p.globs
                    .iter()
                    .all(|(g, generation)| *generation <= filled || !glob::matches(g, tag))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn purge_invalidates_older_fills_only() {
        let g = TagGenerations::default();
        let before = g.current();
        assert!(g.valid(&tags(&["a"]), before));
        g.purge(&tags(&["a"]));
        assert!(!g.valid(&tags(&["a"]), before), "filled before the purge");
        assert!(g.valid(&tags(&["b"]), before), "other tags untouched");
        assert!(g.valid(&[], before), "untagged entries untouched");
        assert!(
            g.valid(&tags(&["a"]), g.current()),
            "filled after the purge"
        );
    }

    #[test]
    fn a_fill_racing_a_purge_is_invalid() {
        let g = TagGenerations::default();
        let fill_started = g.current();
        g.purge(&tags(&["chat:1"]));
        // The fill's response arrives now; it must not count as valid.
        assert!(!g.valid(&tags(&["chat:1"]), fill_started));
    }

    #[test]
    fn glob_purges() {
        let g = TagGenerations::default();
        let before = g.current();
        g.purge_glob("reservas:*");
        assert!(!g.valid(&tags(&["reservas:1"]), before));
        assert!(g.valid(&tags(&["bots:1"]), before));
        assert!(g.valid(&tags(&["reservas:1"]), g.current()));
    }

    #[test]
    fn forgetting_tags_over_purges() {
        let g = TagGenerations::default();
        let before = g.current();
        let many: Vec<String> = (0..MAX_TAGS + 1).map(|i| format!("t{i}")).collect();
        g.purge(&many);
        assert!(!g.valid(&tags(&["never-purged"]), before));
        assert!(g.valid(&tags(&["never-purged"]), g.current()));
    }
}
