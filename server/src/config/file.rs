//! Config files as text: the one size bound and encoding check for every
//! file Switchyard reads while serving (config.yaml, config.pbtxt,
//! routes.yaml, MLmodel), wherever it comes from. A file that fails them is
//! refused with its reason, like any bad config; what serves stays.

use std::path::Path;

/// Largest config file Switchyard reads (config.yaml, config.pbtxt,
/// routes.yaml, MLmodel). Real ones are a few KiB; the bound keeps a hostile
/// or mistaken file from costing its size in memory, and parsers from
/// recursing through it.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A config file's text, or why it cannot be read as one (too large, not UTF-8).
pub type ConfigText = Result<String, String>;

/// Checks a config file's bytes: size bound, UTF-8.
pub fn config_text(bytes: &[u8]) -> ConfigText {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "the file is {} bytes; config files may be at most {MAX_CONFIG_BYTES} bytes",
            bytes.len()
        ));
    }
    String::from_utf8(bytes.to_vec()).map_err(|err| {
        format!(
            "the file is not UTF-8 text (invalid byte at offset {})",
            err.utf8_error().valid_up_to()
        )
    })
}

/// Deepest flow nesting (`[`/`{`) a YAML config may have. serde_yaml's own
/// recursion limit is applied only after its parser has read the whole
/// document, and that parser takes quadratic time in the flow depth (measured:
/// 30,000 levels, 9 s): a 1 MiB file could hold a reconcile for minutes.
/// Block nesting costs indentation, so the size bound already limits it.
pub const MAX_YAML_FLOW_DEPTH: usize = 64;

/// Parses YAML config text after checking its flow nesting.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    check_yaml_flow_depth(text)?;
    serde_yaml_ng::from_str(text).map_err(|err| err.to_string())
}

/// Counts `[`/`{` nesting outside comments and quoted scalars. Quotes open a
/// scalar only where YAML lets one start (after a space, `[`, `{`, `,`, `:`,
/// `-` or at a line start), so an apostrophe inside a plain word is no quote.
fn check_yaml_flow_depth(text: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut previous = '\n';
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        let at_token_start = previous.is_whitespace() || "[{,:-".contains(previous);
        match c {
            '\n' => line += 1,
            '#' if previous.is_whitespace() => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '"' | '\'' if at_token_start => {
                let quote = c;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' if quote == '"' => {
                            chars.next();
                        }
                        '\n' => line += 1,
                        c if c == quote => break,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_YAML_FLOW_DEPTH {
                    return Err(format!(
                        "line {line}: `[`/`{{` nest more than {MAX_YAML_FLOW_DEPTH} levels deep"
                    ));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        previous = c;
    }
    Ok(())
}

/// Reads a local config file, never more than `MAX_CONFIG_BYTES` + 1 bytes of
/// it. `Ok(None)`: there is no such file.
pub fn read_config_file(path: &Path) -> Result<Option<ConfigText>, std::io::Error> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Ok(Some(Err(format!(
            "the file is larger than {MAX_CONFIG_BYTES} bytes, the most a config file may be"
        ))));
    }
    Ok(Some(config_text(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_non_utf8_files_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.pbtxt");
        assert!(read_config_file(&path).unwrap().is_none());
        std::fs::write(&path, "max_batch_size: 8\n").unwrap();
        assert_eq!(
            read_config_file(&path).unwrap().unwrap().unwrap(),
            "max_batch_size: 8\n"
        );
        std::fs::write(&path, vec![b'#'; MAX_CONFIG_BYTES + 1]).unwrap();
        let err = read_config_file(&path).unwrap().unwrap().unwrap_err();
        assert!(err.contains("larger than 1048576 bytes"), "{err}");
        std::fs::write(&path, b"name: \"\xff\xfe\"").unwrap();
        let err = read_config_file(&path).unwrap().unwrap().unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
        assert!(config_text(&vec![b' '; MAX_CONFIG_BYTES + 1]).is_err());
    }

    #[test]
    fn deep_yaml_flow_nesting_is_refused_before_parsing() {
        let deep = |n: usize| format!("a: {}{}", "[".repeat(n), "]".repeat(n));
        assert!(check_yaml_flow_depth(&deep(MAX_YAML_FLOW_DEPTH)).is_ok());
        let err = check_yaml_flow_depth(&deep(300_000)).unwrap_err();
        assert!(err.contains("nest more than 64"), "{err}");
        // Brackets inside quotes and comments, and apostrophes in words, are text.
        let quoted = format!(
            "a: \"{}\"\nb: '{}'\n# {}\nc: it's [1, 2]\nd: [1, {{e: [2]}}]\n",
            "[".repeat(100),
            "{".repeat(100),
            "[".repeat(100)
        );
        assert!(check_yaml_flow_depth(&quoted).is_ok(), "{quoted}");
        let parsed: std::collections::BTreeMap<String, serde_yaml_ng::Value> =
            parse_yaml(&quoted).unwrap();
        assert_eq!(parsed.len(), 4);
    }
}
