//! MLflow webhooks: a signed notification that a registry changed (an alias
//! moved, a version was created) makes the poller look at once instead of at
//! its next interval. Verification follows MLflow's scheme: HMAC-SHA256 over
//! `<delivery id>.<timestamp>.<body>` with the shared secret, sent as
//! `X-MLflow-Signature: v1,<base64>`, compared in constant time, and only
//! within five minutes of `X-MLflow-Timestamp` (no replays).

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{ApiError, ErrorKind};

/// How far a delivery's timestamp may be from our clock.
const MAX_SKEW_SECONDS: i64 = 300;

fn unauthenticated(message: &str) -> ApiError {
    ApiError::new(
        ErrorKind::Unauthenticated,
        format!("MLflow webhook rejected: {message}"),
    )
}

/// Checks a delivery; `now` is Unix seconds.
pub fn verify(
    secret: &str,
    delivery_id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
) -> Result<(), ApiError> {
    let delivery_id =
        delivery_id.ok_or_else(|| unauthenticated("no X-MLflow-Delivery-Id header"))?;
    let timestamp = timestamp.ok_or_else(|| unauthenticated("no X-MLflow-Timestamp header"))?;
    let signature = signature.ok_or_else(|| unauthenticated("no X-MLflow-Signature header"))?;
    let sent: i64 = timestamp
        .parse()
        .map_err(|_| unauthenticated("X-MLflow-Timestamp is not Unix seconds"))?;
    if (now - sent).abs() > MAX_SKEW_SECONDS {
        return Err(unauthenticated(
            "the timestamp is more than 5 minutes from now",
        ));
    }
    let encoded = signature
        .strip_prefix("v1,")
        .ok_or_else(|| unauthenticated("X-MLflow-Signature must be `v1,<base64>`"))?;
    let expected = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| unauthenticated("X-MLflow-Signature is not base64"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .map_err(|_| unauthenticated("bad secret"))?;
    mac.update(delivery_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| unauthenticated("the signature does not match"))
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, id: &str, ts: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(body);
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn accepts_mlflows_signature_and_rejects_everything_else() {
        let body = br#"{"entity":"model_version_alias","action":"created"}"#;
        let now = 1_800_000_000;
        let ts = now.to_string();
        let good = sign("s3cret", "d-1", &ts, body);
        assert!(verify("s3cret", Some("d-1"), Some(&ts), Some(&good), body, now).is_ok());
        let cases = [
            verify("other", Some("d-1"), Some(&ts), Some(&good), body, now),
            verify("s3cret", Some("d-2"), Some(&ts), Some(&good), body, now),
            verify("s3cret", Some("d-1"), Some(&ts), Some(&good), b"{}", now),
            verify(
                "s3cret",
                Some("d-1"),
                Some(&ts),
                Some(&good),
                body,
                now + 301,
            ),
            verify("s3cret", Some("d-1"), Some(&ts), None, body, now),
            verify("s3cret", Some("d-1"), Some(&ts), Some("v2,abc"), body, now),
        ];
        for result in cases {
            assert_eq!(result.unwrap_err().kind, ErrorKind::Unauthenticated);
        }
    }
}
