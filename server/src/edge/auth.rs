//! Bearer-token authentication. Two token sets: inference tokens open the
//! inference and metadata APIs; admin tokens open everything, including model
//! control. Tokens come from files (one per line) or environment variables,
//! and are compared in constant time (on SHA-256 digests, so neither content
//! nor length leaks through timing). Health probes, metrics and the MLflow
//! webhook (which carries its own HMAC) need no token.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ErrorKind};

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Inference,
    Admin,
}

#[derive(Clone, Default)]
pub struct Tokens {
    inference: Vec<[u8; 32]>,
    admin: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets, not even hashed.
        f.debug_struct("Tokens")
            .field("inference", &self.inference.len())
            .field("admin", &self.admin.len())
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Tokens from a file (one per line; blank lines and `#` comments ignored)
/// and from a comma-separated list.
pub fn read_tokens(
    file: Option<&std::path::Path>,
    list: Option<&str>,
) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned),
        );
    }
    if let Some(list) = list {
        tokens.extend(
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        );
    }
    if let Some(short) = tokens.iter().find(|t| t.len() < 16) {
        return Err(format!(
            "a token of {} characters is too short to be a secret; use at least 16",
            short.len()
        ));
    }
    Ok(tokens)
}

impl Tokens {
    pub fn new(inference: &[String], admin: &[String]) -> Self {
        Tokens {
            inference: inference.iter().map(|t| digest(t)).collect(),
            admin: admin.iter().map(|t| digest(t)).collect(),
        }
    }

    /// Whether any token is configured for this scope (else it is open).
    pub fn required(&self, scope: Scope) -> bool {
        match scope {
            Scope::Inference => !self.inference.is_empty() || !self.admin.is_empty(),
            Scope::Admin => !self.admin.is_empty(),
        }
    }

    fn matches(set: &[[u8; 32]], presented: &[u8; 32]) -> bool {
        // Check every entry: the time does not depend on which one matched.
        set.iter()
            .fold(false, |found, t| found | bool::from(t.ct_eq(presented)))
    }

    /// Checks an `Authorization` header value for `scope`.
    pub fn check(&self, authorization: Option<&str>, scope: Scope) -> Result<(), ApiError> {
        if !self.required(scope) {
            return Ok(());
        }
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::Unauthenticated,
                    "missing credentials: send `Authorization: Bearer <token>`",
                )
            })?;
        let presented = digest(token);
        if Self::matches(&self.admin, &presented) {
            return Ok(());
        }
        match scope {
            Scope::Inference if Self::matches(&self.inference, &presented) => Ok(()),
            Scope::Admin if Self::matches(&self.inference, &presented) => Err(ApiError::new(
                ErrorKind::PermissionDenied,
                "this token may run inference but not control models; use an admin token",
            )),
            _ => Err(ApiError::new(
                ErrorKind::Unauthenticated,
                "the bearer token is not valid",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_and_tokens() {
        let tokens = Tokens::new(
            &["infer-token-0123456789".into()],
            &["admin-token-0123456789".into()],
        );
        let bearer = |t: &str| format!("Bearer {t}");
        assert!(
            tokens
                .check(Some(&bearer("infer-token-0123456789")), Scope::Inference)
                .is_ok()
        );
        assert!(
            tokens
                .check(Some(&bearer("admin-token-0123456789")), Scope::Inference)
                .is_ok()
        );
        assert!(
            tokens
                .check(Some(&bearer("admin-token-0123456789")), Scope::Admin)
                .is_ok()
        );
        let denied = tokens
            .check(Some(&bearer("infer-token-0123456789")), Scope::Admin)
            .unwrap_err();
        assert_eq!(denied.kind, ErrorKind::PermissionDenied);
        for bad in [
            None,
            Some("Basic abc"),
            Some("Bearer wrong-token-0000000000"),
        ] {
            assert_eq!(
                tokens.check(bad, Scope::Inference).unwrap_err().kind,
                ErrorKind::Unauthenticated
            );
        }
        let open = Tokens::default();
        assert!(open.check(None, Scope::Admin).is_ok());
        let admin_only = Tokens::new(&[], &["admin-token-0123456789".into()]);
        assert!(
            admin_only.check(None, Scope::Inference).is_err(),
            "an admin token set closes inference too"
        );
    }

    #[test]
    fn token_files_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# comment\n\nfirst-token-0123456789\n").unwrap();
        let tokens = read_tokens(Some(&file), Some("second-token-012345678, ")).unwrap();
        assert_eq!(
            tokens,
            vec!["first-token-0123456789", "second-token-012345678"]
        );
        assert!(
            read_tokens(None, Some("short"))
                .unwrap_err()
                .contains("too short")
        );
    }
}
