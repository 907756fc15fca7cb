//! Artifact download with `ETag`, `Range` and `If-Range`, so devices resume after a cut.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::error::{ApiResult, AppError};
use super::{AppState, Reader};
use crate::error::HubError;

/// Parses a single `bytes=` range against `size`: `start-`, `start-end` or `-suffix`.
/// Multiple ranges are not supported (devices never ask for them).
pub fn parse_range(value: &str, size: u64) -> Result<(u64, u64), String> {
    let spec = value
        .trim()
        .strip_prefix("bytes=")
        .ok_or("only `bytes=` ranges are supported")?;
    if spec.contains(',') {
        return Err("multiple ranges are not supported".into());
    }
    let (a, b) = spec.split_once('-').ok_or("a range needs a '-'")?;
    let num = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("{s:?} is not a byte offset"))
    };
    let (start, end) = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => return Err("empty range".into()),
        (true, false) => {
            let n = num(b)?.min(size);
            (size - n, size.saturating_sub(1))
        }
        (false, true) => (num(a)?, size.saturating_sub(1)),
        (false, false) => (num(a)?, num(b)?.min(size.saturating_sub(1))),
    };
    if start >= size || start > end {
        return Err(format!(
            "range {start}-{end} is outside the artifact's {size} bytes"
        ));
    }
    Ok((start, end))
}

pub async fn get_artifact(
    _: Reader,
    State(hub): State<AppState>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (_, manifest) = hub.registry.find(&model, &version)?;
    let digest = manifest.artifact.sha256;
    let etag = format!("\"{digest}\"");
    let path = hub.registry.artifact_path(&digest);
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| HubError::Internal(format!("artifact {digest} missing: {e}")))?;
    let size = file.metadata().await?.len();

    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    // A range applies only if the client's copy is the same artifact (If-Range, when present).
    let range_ok = headers
        .get(header::IF_RANGE)
        .map(|v| v.to_str().ok() == Some(etag.as_str()))
        .unwrap_or(true);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if range_ok => Some(
            parse_range(r, size)
                .map_err(|m| AppError::new(StatusCode::RANGE_NOT_SATISFIABLE, m))?,
        ),
        _ => None,
    };
    let mut builder = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let (status, start, len) = match range {
        Some((start, end)) => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        None => (StatusCode::OK, 0, size),
    };
    file.seek(std::io::SeekFrom::Start(start)).await?;
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(len), 64 * 1024));
    builder
        .status(status)
        .header(header::CONTENT_LENGTH, HeaderValue::from(len))
        .body(body)
        .map_err(|e| HubError::Internal(e.to_string()).into())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Ok((0, 9)));
        assert_eq!(parse_range("bytes=4-", 10), Ok((4, 9)));
        assert_eq!(parse_range("bytes=2-5", 10), Ok((2, 5)));
        assert_eq!(parse_range("bytes=2-50", 10), Ok((2, 9)));
        assert_eq!(parse_range("bytes=-3", 10), Ok((7, 9)));
        for bad in [
            "bytes=10-",
            "bytes=5-2",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=-",
            "bytes=x-",
        ] {
            assert!(parse_range(bad, 10).is_err(), "{bad}");
        }
    }
}
