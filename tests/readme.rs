//! The README's configuration examples load: every `json` block in README.md that is a filter
//! configuration (it has `rules`) is given to the configuration parser, with the `[...]` of its
//! inline key sets replaced by a real key and `…` secrets by a value. A field the README shows
//! but the filter refuses (or the other way round, a rename) fails here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "support/tokens.rs"]
mod tokens;

use oauth_filter::config::Config;

/// The bodies of the README's fenced `json` blocks.
fn json_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```json") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(body), _) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn every_configuration_in_the_readme_loads() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let key = tokens::Signer::es256("readme").jwk();
    let inline = serde_json::to_string(&tokens::jwks(&[key])).unwrap();
    let inline = &inline[1..inline.len() - 1];
    let mut loaded = 0;
    for block in json_blocks(&readme) {
        if !block.contains("\"rules\"") {
            continue;
        }
        let text = block
            .replace(r#"{\"keys\":[...]}"#, inline)
            .replace('…', "a-secret");
        if let Err(e) = Config::from_json(text.as_bytes()) {
            panic!("a README configuration is refused: {e}\n{block}");
        }
        loaded += 1;
    }
    assert!(loaded >= 2, "the README's configurations were not found");
}
