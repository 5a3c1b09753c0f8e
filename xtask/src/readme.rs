//! The root README's first example is `examples/minimal_proxy.rs`, word for
//! word: the file is what CI builds (and clippy checks), the README is what
//! a user pastes, so they must not drift apart.

use std::fs;
use std::path::Path;

/// The example the README opens with.
const EXAMPLE: &str = "examples/minimal_proxy.rs";

pub fn check(root: &Path) -> Result<(), String> {
    let read = |path: &str| {
        fs::read_to_string(root.join(path)).map_err(|e| format!("cannot read {path}: {e}"))
    };
    let (readme, example) = (read("README.md")?, read(EXAMPLE)?);
    if embeds(&readme, &example) {
        println!("readme: README.md opens with {EXAMPLE}, word for word");
        Ok(())
    } else {
        Err(format!(
            "README.md's first Rust block is not {EXAMPLE} word for word: copy the file into it"
        ))
    }
}

/// Whether the first Rust code block of `readme` is exactly `code`.
fn embeds(readme: &str, code: &str) -> bool {
    let Some(start) = readme.find("```rust") else {
        return false;
    };
    let Some(body) = readme[start..].split_once('\n').map(|(_, rest)| rest) else {
        return false;
    };
    body.split_once("```")
        .is_some_and(|(block, _)| block == code)
}

#[cfg(test)]
mod tests {
    use super::embeds;

    #[test]
    fn the_first_rust_block_must_be_the_file() {
        let code = "fn main() {}\n";
        assert!(embeds(
            "# x\n```toml\na = 1\n```\n```rust,no_run\nfn main() {}\n```\n",
            code
        ));
        assert!(
            !embeds("```rust\nfn main() { }\n```\n", code),
            "a changed line"
        );
        assert!(
            !embeds(
                "```rust\nfn other() {}\n```\n```rust\nfn main() {}\n```\n",
                code
            ),
            "not the first"
        );
        assert!(!embeds("no code here", code));
    }
}
