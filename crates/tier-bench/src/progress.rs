//! Says on stderr which section starts and about how long it takes: the time
//! it took in the last run of the same kind (full or `--quick`), kept in
//! `durations.txt` beside the report, or a rough figure before the first run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Sections, and roughly how many seconds a full run of each takes on a
/// two-core machine (a quick run takes a fraction).
const ROUGH: &[(&str, u64)] = &[
    ("hit", 60),
    ("latency", 30),
    ("insert", 40),
    ("ratio", 60),
    ("ttfb", 20),
    ("disk", 150),
    ("large", 40),
    ("reads", 30),
    ("hybrid", 30),
    ("proxy", 250),
    ("redis", 40),
    ("raw", 10),
];

/// The durations of the last runs, and the section running now.
#[derive(Debug)]
pub struct Progress {
    file: PathBuf,
    kind: &'static str,
    last: BTreeMap<String, u64>,
    current: Option<(String, Instant)>,
}

impl Progress {
    /// Read what the last runs took from `out/durations.txt`.
    pub fn new(out: &Path, quick: bool) -> Self {
        let file = out.join("durations.txt");
        let last = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (key, secs) = line.rsplit_once(' ')?;
                Some((key.to_string(), secs.parse().ok()?))
            })
            .collect();
        Progress {
            file,
            kind: if quick { "quick" } else { "full" },
            last,
            current: None,
        }
    }

    /// Section `name` starts (the one before it, if any, ends).
    pub fn start(&mut self, name: &str) {
        self.end();
        let key = format!("{} {name}", self.kind);
        let about = match self.last.get(&key) {
            Some(secs) => format!("took {} last time", human(*secs)),
            None => {
                let rough = ROUGH
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or(30, |(_, s)| *s);
                let rough = if self.kind == "quick" {
                    rough / 5
                } else {
                    rough
                };
                format!("roughly {}", human(rough.max(1)))
            }
        };
        eprintln!("bench: {name} ({about}) ...");
        self.current = Some((name.to_string(), Instant::now()));
    }

    /// The running section, if any, ends: say how long it took and record it.
    pub fn end(&mut self) {
        let Some((name, started)) = self.current.take() else {
            return;
        };
        let secs = started.elapsed().as_secs();
        eprintln!("bench: {name} done in {}", human(secs));
        self.last.insert(format!("{} {name}", self.kind), secs);
        let text: String = self
            .last
            .iter()
            .map(|(key, secs)| format!("{key} {secs}\n"))
            .collect();
        let _ = std::fs::write(&self.file, text);
    }
}

fn human(secs: u64) -> String {
    if secs < 60 {
        format!("{secs} s")
    } else {
        format!("{} min {} s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_kept_per_kind_of_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = Progress::new(dir.path(), true);
        p.start("hit");
        p.start("disk");
        p.end();
        let text = std::fs::read_to_string(dir.path().join("durations.txt")).expect("read");
        assert!(
            text.contains("quick hit 0\n") && text.contains("quick disk 0\n"),
            "{text}"
        );
        let again = Progress::new(dir.path(), true);
        assert_eq!(again.last.get("quick disk"), Some(&0));
        let full = Progress::new(dir.path(), false);
        assert!(!full.last.contains_key("full disk"));
        assert_eq!(human(75), "1 min 15 s");
    }
}
