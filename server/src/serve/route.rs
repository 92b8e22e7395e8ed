//! Choosing a variant of a routed endpoint for one request (pure): a pinned
//! variant, else a sticky key, else weights; only ready variants are chosen.
//!
//! Sticky keys use weighted rendezvous hashing: each (key, variant) pair gets
//! a score `-weight / ln(u)` with `u` from the hash, and the highest wins. A
//! key stays on its variant while weights are unchanged, and when weights
//! change only the keys that must move do. The hash is specified (SHA-256),
//! not Rust's `DefaultHasher`, whose output may change between releases:
//! replicas built by different toolchains, and any tool outside, agree.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::capture::CapturePolicy;
use crate::config::routes::{Endpoint, StickyKey};
use crate::error::ApiError;
use crate::serve::catalog::Catalog;
use crate::serve::infer::{InferRequest, Routed};
use crate::serve::model::ModelVersion;
use crate::serve::traffic::ShadowJob;

/// `u` in (0, 1) for a (key, variant) pair: the first 8 bytes of
/// SHA-256(key ‖ 0x00 ‖ variant), big-endian, top 53 bits, centred in its step.
fn unit_hash(key: &str, variant: &str) -> f64 {
    let digest = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update([0u8])
        .chain_update(variant.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // (0, 1): never 0 (ln 0) nor 1 (score ∞).
    ((u64::from_be_bytes(first) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Picks a variant: the pinned one, else by sticky key (rendezvous hashing),
/// else by weight with `random` in [0, 1). Only `ready` variants are chosen.
pub fn choose(
    endpoint: &Endpoint,
    ready: &[bool],
    pinned: Option<&str>,
    sticky_key: Option<&str>,
    random: f64,
) -> Result<usize, ApiError> {
    if let Some(name) = pinned {
        let index = endpoint
            .variants
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = endpoint.variants.iter().map(|v| v.name.as_str()).collect();
                ApiError::invalid(format!(
                    "endpoint `{}` has no variant `{name}` (header {}); variants: {names:?}",
                    endpoint.name, endpoint.override_header
                ))
            })?;
        if !ready.get(index).copied().unwrap_or(false) {
            return Err(ApiError::unavailable(format!(
                "variant `{name}` of endpoint `{}` is not ready",
                endpoint.name
            )));
        }
        return Ok(index);
    }
    let candidates: Vec<usize> = (0..endpoint.variants.len())
        .filter(|&i| ready.get(i).copied().unwrap_or(false) && endpoint.variants[i].weight > 0.0)
        .collect();
    if candidates.is_empty() {
        return Err(ApiError::unavailable(format!(
            "endpoint `{}` has no ready variant with traffic",
            endpoint.name
        )));
    }
    if let Some(key) = sticky_key {
        let best = candidates.iter().copied().max_by(|&a, &b| {
            let score = |i: usize| {
                -endpoint.variants[i].weight / unit_hash(key, &endpoint.variants[i].name).ln()
            };
            score(a).total_cmp(&score(b))
        });
        return best.ok_or_else(|| ApiError::internal("no variant"));
    }
    let total: f64 = candidates
        .iter()
        .map(|&i| endpoint.variants[i].weight)
        .sum();
    let mut point = random.clamp(0.0, 1.0 - f64::EPSILON) * total;
    for &i in &candidates {
        point -= endpoint.variants[i].weight;
        if point < 0.0 {
            return Ok(i);
        }
    }
    Ok(candidates[candidates.len() - 1])
}

/// Where a request goes: the model version, the route (for routed
/// requests), and a shadow copy to offer once the stable answer is known.
pub struct Routing {
    pub model: Arc<ModelVersion>,
    pub routed: Option<Routed>,
    pub shadow: Option<ShadowJob>,
}

/// Picks the model version for a request: an endpoint's variant, or the model itself.
pub fn route(
    catalog: &Catalog,
    request: &InferRequest,
    capture: Option<(&Arc<CapturePolicy>, &str)>,
) -> Result<Routing, ApiError> {
    if let Some(endpoint) = catalog.routes.endpoints.get(&request.model) {
        if request.version.is_some() {
            return Err(ApiError::invalid(format!(
                "`{}` is an endpoint; its variants choose the version (pin one with the {} header)",
                endpoint.name, endpoint.override_header
            )));
        }
        return through_endpoint(catalog, endpoint, request, capture);
    }
    // A model rolling out a new version routes unversioned requests between
    // its stable version and the candidate; a version asked for is served as is.
    if request.version.as_deref().is_none_or(str::is_empty)
        && let Some(rollout) = catalog
            .models
            .get(&request.model)
            .and_then(|entry| entry.rollout.as_ref())
    {
        return through_endpoint(catalog, &rollout.endpoint, request, capture);
    }
    Ok(Routing {
        model: catalog.lookup(&request.model, request.version.as_deref())?,
        routed: None,
        shadow: None,
    })
}

/// Picks one of `endpoint`'s variants, and a shadow copy by its share.
fn through_endpoint(
    catalog: &Catalog,
    endpoint: &Endpoint,
    request: &InferRequest,
    capture: Option<(&Arc<CapturePolicy>, &str)>,
) -> Result<Routing, ApiError> {
    let ready: Vec<bool> = endpoint
        .variants
        .iter()
        .map(|v| catalog.resolve(&v.target).is_ok())
        .collect();
    let header = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let sticky_parameter;
    let sticky = match &endpoint.sticky {
        Some(StickyKey::Header(name)) => header(name),
        Some(StickyKey::Parameter(name)) => {
            sticky_parameter = request.parameter_text(name);
            sticky_parameter.as_deref()
        }
        None => None,
    };
    let index = choose(
        endpoint,
        &ready,
        header(&endpoint.override_header),
        sticky,
        rand::random(),
    )?;
    let variant = &endpoint.variants[index];
    let model = catalog.resolve(&variant.target)?;
    let mut job = None;
    if let Some(shadow) = &endpoint.shadow
        && rand::random::<f64>() * 100.0 < shadow.percent
        && let Ok(shadow_model) = catalog.resolve(&shadow.target)
    {
        // A captured request's shadow answer is recorded under the same id.
        let capture = capture.map(|(policy, id)| {
            crate::serve::capture::Pending::start(
                policy.clone(),
                id.to_owned(),
                request,
                Some((endpoint.name.as_str(), "shadow")),
            )
        });
        job = Some(ShadowJob {
            endpoint: endpoint.name.clone(),
            window: shadow.window.clone(),
            model: shadow_model,
            inputs: request.inputs.clone(),
            capture,
            stable: None,
            tolerance: shadow.tolerance,
        });
    }
    Ok(Routing {
        model,
        routed: Some((endpoint.name.clone(), variant.name.clone())),
        shadow: job,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routes::parse;
    use std::collections::BTreeSet;

    fn models() -> BTreeSet<String> {
        ["fraud", "fraud-v2", "shadowy"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    const ROUTES: &str = r#"
endpoints:
  scoring:
    variants:
      - {name: stable, model: fraud, version: 1, weight: 90}
      - {name: canary, model: fraud-v2, weight: 10}
    sticky: {header: X-User}
    shadow: {model: shadowy, percent: 25}
"#;
    #[test]
    fn weighted_split_is_accurate() {
        let table = parse(ROUTES, &models()).unwrap();
        let e = &table.endpoints["scoring"];
        let mut canary = 0;
        for i in 0..10_000 {
            // A low-discrepancy sequence stands in for the random numbers.
            let r = (i as f64 * 0.618_033_988_75).fract();
            if choose(e, &[true, true], None, None, r).unwrap() == 1 {
                canary += 1;
            }
        }
        // The sequence is evenly spread, so the split is exact to a few requests:
        // a weight off by a tenth of itself (11% or 9%) cannot pass.
        assert!(
            (990..=1010).contains(&canary),
            "{canary} of 10000 went to the 10% canary"
        );
    }

    #[test]
    fn sticky_keys_stay_put_and_move_minimally() {
        let table = parse(ROUTES, &models()).unwrap();
        let mut e = (*table.endpoints["scoring"]).clone();
        // 20,000 keys: the hash's spread is ±0.2% (one sd), so ±0.7% still
        // refuses a weight off by a tenth of itself.
        let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let before: Vec<usize> = keys
            .iter()
            .map(|k| choose(&e, &[true, true], None, Some(k), 0.0).unwrap())
            .collect();
        let again: Vec<usize> = keys
            .iter()
            .map(|k| choose(&e, &[true, true], None, Some(k), 0.9).unwrap())
            .collect();
        assert_eq!(before, again, "same key, same variant");
        let share = before.iter().filter(|&&v| v == 1).count() as f64 / keys.len() as f64;
        assert!((0.093..0.107).contains(&share), "{share}");
        // 10% → 30%: only keys moving to the canary change, about 20% of them.
        e.variants[0].weight = 70.0;
        e.variants[1].weight = 30.0;
        let after: Vec<usize> = keys
            .iter()
            .map(|k| choose(&e, &[true, true], None, Some(k), 0.0).unwrap())
            .collect();
        let moved_back = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| **b == 1 && **a == 0)
            .count();
        let moved =
            before.iter().zip(&after).filter(|(b, a)| b != a).count() as f64 / keys.len() as f64;
        assert_eq!(moved_back, 0, "no key leaves the variant whose weight grew");
        assert!((0.19..0.21).contains(&moved), "{moved}");
    }

    #[test]
    fn the_sticky_hash_is_specified_and_never_changes() {
        // Replicas and tools outside compute the same `u` from the same
        // digest; changing the hash would move every user.
        let digest = Sha256::digest(b"user-1\0stable");
        let top = u64::from_be_bytes(digest[..8].try_into().unwrap());
        let expected = ((top >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        assert_eq!(unit_hash("user-1", "stable"), expected);
        assert_eq!(format!("{top:016x}"), PINNED_PREFIX);
    }

    /// SHA-256("user-1\0stable")'s first 8 bytes.
    const PINNED_PREFIX: &str = "38c21905d46cf24a";

    #[test]
    fn pins_and_readiness() {
        let table = parse(ROUTES, &models()).unwrap();
        let e = &table.endpoints["scoring"];
        assert_eq!(
            choose(e, &[true, true], Some("canary"), None, 0.0).unwrap(),
            1
        );
        assert!(
            choose(e, &[true, true], Some("nope"), None, 0.0)
                .unwrap_err()
                .message
                .contains("no variant `nope`")
        );
        assert_eq!(
            choose(e, &[true, false], Some("canary"), None, 0.0)
                .unwrap_err()
                .kind,
            crate::error::ErrorKind::Unavailable
        );
        // An unready canary gets nothing; the stable takes everything.
        for i in 0..100 {
            assert_eq!(
                choose(e, &[true, false], None, None, i as f64 / 100.0).unwrap(),
                0
            );
        }
        assert!(choose(e, &[false, false], None, None, 0.5).is_err());
    }
}
