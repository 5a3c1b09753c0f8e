//! The crate layering rules of `ARCHITECTURE.md`, checked from the manifests.
//!
//! - The tier crates never depend on each other or on `tier-hybrid`, in any
//!   dependency section.
//! - `tier-hybrid` has no normal (non-dev) dependency on a concrete tier.
//! - `tier-core` depends on no other tier crate.
//! - Every publishable crate has a literal `version`, a `README.md` and a
//!   `CHANGELOG.md`.

use std::fs;
use std::path::Path;

/// Concrete tiers: they may depend on `tier-core` only.
const TIERS: &[&str] = &["tier-memory", "tier-disk", "tier-redis"];
const HYBRID: &str = "tier-hybrid";
/// Every crate of the project that users may depend on.
const PUBLISHED: &[&str] = &[
    "tier-core",
    "tier-memory",
    "tier-disk",
    "tier-hybrid",
    "tier-redis",
];

/// One dependency line of a manifest: its section kind and crate name.
#[derive(Debug, PartialEq)]
struct Dep {
    dev: bool,
    name: String,
}

pub fn check(root: &Path) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut checked = 0;
    for krate in PUBLISHED {
        let dir = root.join("crates").join(krate);
        let manifest_path = dir.join("Cargo.toml");
        let Ok(manifest) = fs::read_to_string(&manifest_path) else {
            // Crates are created by their own issues; a missing one is not an error.
            continue;
        };
        checked += 1;
        let deps = dependencies(&manifest);
        let forbidden: Vec<&str> = if *krate == "tier-core" {
            TIERS.iter().copied().chain([HYBRID]).collect()
        } else if TIERS.contains(krate) {
            TIERS
                .iter()
                .copied()
                .filter(|t| t != krate)
                .chain([HYBRID])
                .collect()
        } else {
            Vec::new()
        };
        for dep in &deps {
            if forbidden.contains(&dep.name.as_str()) {
                problems.push(format!("{krate} depends on {}", dep.name));
            }
            if *krate == HYBRID && !dep.dev && TIERS.contains(&dep.name.as_str()) {
                problems.push(format!(
                    "{HYBRID} has a normal dependency on the concrete tier {} (allowed only in dev-dependencies)",
                    dep.name
                ));
            }
        }
        if !has_literal_version(&manifest) {
            problems.push(format!(
                "{krate} has no literal `version = \"…\"` of its own"
            ));
        }
        for doc in ["README.md", "CHANGELOG.md"] {
            if !dir.join(doc).is_file() {
                problems.push(format!("{krate} has no {doc}"));
            }
        }
    }
    if problems.is_empty() {
        println!("    layering: {checked} crates checked, rules hold");
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn has_literal_version(manifest: &str) -> bool {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package && line.starts_with("version") && line.contains('"') {
            return true;
        }
    }
    false
}

/// The dependencies a manifest names, from `[dependencies]`,
/// `[dev-dependencies]`, `[build-dependencies]`, their `[target.…]` forms and
/// `[dependencies.NAME]` tables.
fn dependencies(manifest: &str) -> Vec<Dep> {
    let mut deps = Vec::new();
    let mut section: Option<bool> = None; // Some(dev) inside a dependency table
    for line in manifest.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let header = header.trim();
            let last_kind = header
                .split('.')
                .find(|part| part.ends_with("dependencies"));
            section = None;
            if let Some(kind) = last_kind {
                let dev = kind == "dev-dependencies";
                // `[dependencies.NAME]` names the dependency in the header.
                let after = header.split_once(&format!("{kind}.")).map(|(_, n)| n);
                match after {
                    Some(name) => deps.push(Dep {
                        dev,
                        name: name.trim_matches('"').to_string(),
                    }),
                    None => section = Some(dev),
                }
            }
            continue;
        }
        if let Some(dev) = section {
            if let Some((name, _)) = line.split_once('=') {
                let name = name.trim().trim_matches('"');
                let name = name.split('.').next().unwrap_or(name);
                deps.push(Dep {
                    dev,
                    name: name.to_string(),
                });
            }
        }
    }
    deps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_dependencies_in_every_section_form() {
        let manifest = r#"
[package]
name = "tier-hybrid"
version = "0.1.0"

[dependencies]
tier-core.workspace = true
tokio = { workspace = true }

[dev-dependencies]
tier-memory = { path = "../tier-memory" }

[target.'cfg(unix)'.dependencies]
libc = "0.2"

[dependencies.tier-disk]
path = "../tier-disk"
"#;
        let deps = dependencies(manifest);
        let normal: Vec<_> = deps
            .iter()
            .filter(|d| !d.dev)
            .map(|d| d.name.as_str())
            .collect();
        let dev: Vec<_> = deps
            .iter()
            .filter(|d| d.dev)
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(normal, vec!["tier-core", "tokio", "libc", "tier-disk"]);
        assert_eq!(dev, vec!["tier-memory"]);
        assert!(has_literal_version(manifest));
    }

    #[test]
    fn inherited_version_is_not_literal() {
        assert!(!has_literal_version(
            "[package]\nname = \"x\"\nversion.workspace = true\n"
        ));
    }
}
