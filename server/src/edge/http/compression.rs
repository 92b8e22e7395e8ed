//! HTTP body compression: `Content-Encoding: gzip | deflate | zstd` request bodies
//! are inflated with the size limit applied to the *inflated* size while
//! inflating (a zip bomb costs at most the limit, never its inflated size), and
//! inference responses are compressed when the client's `Accept-Encoding`
//! asks for it (tritonclient's `request_compression_algorithm` and
//! `response_compression_algorithm`).

use std::io::{Read, Write};

use axum::http::{HeaderMap, HeaderValue, header};
use bytes::Bytes;

use crate::error::{ApiError, ErrorKind};

/// The encodings Switchyard reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    /// zlib-wrapped deflate, as HTTP's `deflate` means it (RFC 9110).
    Deflate,
    Zstd,
}

impl Encoding {
    fn parse(name: &str) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "gzip" | "x-gzip" => Some(Encoding::Gzip),
            "deflate" => Some(Encoding::Deflate),
            "zstd" => Some(Encoding::Zstd),
            _ => None,
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
            Encoding::Zstd => "zstd",
        })
    }
}

/// The request body's encoding: `None` for identity; unknown ones are refused.
pub fn request_encoding(headers: &HeaderMap) -> Result<Option<Encoding>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.is_empty() || text.eq_ignore_ascii_case("identity") {
        return Ok(None);
    }
    Encoding::parse(text).map(Some).ok_or_else(|| {
        ApiError::invalid(format!(
            "Content-Encoding {value:?} is not supported; send gzip, deflate, zstd or an uncompressed body"
        ))
    })
}

/// The encoding to answer in, from `Accept-Encoding` (the client's order of
/// preference by q-value; gzip first when equal). `None`: uncompressed.
pub fn response_encoding(headers: &HeaderMap) -> Option<Encoding> {
    let accepted = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
    let mut best: Option<(Encoding, f32)> = None;
    for part in accepted.split(',') {
        let mut pieces = part.split(';');
        let Some(encoding) = pieces.next().and_then(Encoding::parse) else {
            continue;
        };
        let q = pieces
            .find_map(|p| p.trim().strip_prefix("q="))
            .and_then(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((encoding, q));
        }
    }
    best.map(|(encoding, _)| encoding)
}

/// Inflates `body`, refusing (413) as soon as it grows past `limit` bytes.
pub fn inflate(encoding: Encoding, body: &[u8], limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Gzip => Box::new(flate2::read::GzDecoder::new(body)),
        Encoding::Deflate => Box::new(flate2::read::ZlibDecoder::new(body)),
        Encoding::Zstd => Box::new(zstd::stream::read::Decoder::new(body).map_err(|err| {
            ApiError::invalid(format!("the zstd request body is corrupt: {err}"))
        })?),
    };
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|err| {
            ApiError::invalid(format!("the {encoding:?} request body is corrupt: {err}"))
        })?;
    if out.len() > limit {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            format!(
                "the decompressed request body is larger than the limit of {limit} bytes (--max-request-bytes)"
            ),
        ));
    }
    Ok(Bytes::from(out))
}

/// Compresses a response body (fast level: the answer is on the request's clock).
pub fn deflate(encoding: Encoding, body: &[u8]) -> Result<Bytes, ApiError> {
    let level = flate2::Compression::fast();
    let failed =
        |err: std::io::Error| ApiError::internal(format!("compressing the response: {err}"));
    let out = match encoding {
        Encoding::Gzip => {
            let mut writer = flate2::write::GzEncoder::new(Vec::new(), level);
            writer.write_all(body).map_err(failed)?;
            writer.finish().map_err(failed)?
        }
        Encoding::Deflate => {
            let mut writer = flate2::write::ZlibEncoder::new(Vec::new(), level);
            writer.write_all(body).map_err(failed)?;
            writer.finish().map_err(failed)?
        }
        Encoding::Zstd => zstd::bulk::compress(body, 1).map_err(failed)?,
    };
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_a_bomb_stops_at_the_limit() {
        let body = vec![b'7'; 100_000];
        for encoding in [Encoding::Gzip, Encoding::Deflate, Encoding::Zstd] {
            let packed = deflate(encoding, &body).unwrap();
            assert!(packed.len() < 2_000, "{encoding:?}: {}", packed.len());
            assert_eq!(&inflate(encoding, &packed, 100_000).unwrap()[..], &body[..]);
            let err = inflate(encoding, &packed, 99_999).unwrap_err();
            assert_eq!(err.kind, ErrorKind::PayloadTooLarge);
            assert_eq!(
                inflate(encoding, b"not compressed", 100).unwrap_err().kind,
                ErrorKind::InvalidArgument
            );
        }
    }

    #[test]
    fn accept_encoding_follows_q_values() {
        let headers = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
            h
        };
        assert_eq!(response_encoding(&headers("gzip")), Some(Encoding::Gzip));
        assert_eq!(
            response_encoding(&headers("deflate;q=1, gzip;q=0.5")),
            Some(Encoding::Deflate)
        );
        assert_eq!(
            response_encoding(&headers("zstd, gzip;q=0.9")),
            Some(Encoding::Zstd)
        );
        assert_eq!(response_encoding(&headers("br, identity")), None);
        assert_eq!(response_encoding(&headers("gzip;q=0")), None);
        assert_eq!(response_encoding(&HeaderMap::new()), None);
    }
}
