//! Rules for names that reach the file system: model names must be single,
//! safe path components, so no request or registry entry can point outside a
//! repository or cache.

/// Whether `name` is safe as a model name: also a single path component, so it
/// can never reach outside the repository.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_cannot_escape_the_repository() {
        for bad in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            ".hidden",
            "a\\b",
            "name with space",
        ] {
            assert!(!valid_model_name(bad), "{bad:?}");
        }
        for good in ["mlp", "iris-v2", "resnet_50", "model.v1"] {
            assert!(valid_model_name(good), "{good:?}");
        }
    }
}
