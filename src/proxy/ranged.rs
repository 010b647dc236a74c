//! A `Range` request that missed a route's cache (RFC 9110 §14, RFC 9111 §3.4): the proxy
//! fetches (or joins the flight for) the whole resource, so that the cache stores it, and
//! gives the client only the bytes it asked for.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;

use super::context::RequestContext;
use super::reply::Reply;
use super::ProxyBody;
use crate::cache::{byte_range, RangeAnswer};
use crate::upstream::BoxError;

/// Whether `request` asks a cached route for one byte range of a resource (and nothing makes
/// the range conditional): then the whole resource is fetched, and cut.
pub(super) fn fetches_whole(request: &RequestContext) -> bool {
    let parts = &request.parts;
    let Some(range) = parts.headers.get(header::RANGE) else {
        return false;
    };
    let range = range.to_str().unwrap_or_default();
    request.route.cache.is_some()
        && parts.method == Method::GET
        && !parts.headers.contains_key(header::IF_RANGE)
        && range.trim_start().starts_with("bytes=")
        && !range.contains(',')
}

/// The request for the whole resource and the range asked for, when [`fetches_whole`]: the
/// same request without `Range`.
pub(super) fn whole_resource(request: &RequestContext) -> Option<(RequestContext, String)> {
    if !fetches_whole(request) {
        return None;
    }
    let parts = &request.parts;
    let range = parts.headers.get(header::RANGE)?.to_str().ok()?;
    let mut headers = parts.headers.clone();
    headers.remove(header::RANGE);
    Some((request.as_get(headers), range.to_owned()))
}

/// The reply for the range asked for in `range`, cut from `reply` for the whole resource:
/// a 206 streaming only those bytes (the rest is still read, so that the flight completes
/// and the cache stores it), a 416, or the reply unchanged when it is not a 200 of known
/// length.
pub(super) fn cut(mut reply: Reply, range: &str) -> Reply {
    let response = &mut reply.response;
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let (StatusCode::OK, Some(length)) = (response.status(), length) else {
        return reply;
    };
    let part = match byte_range(range, length) {
        RangeAnswer::Whole => return reply,
        RangeAnswer::Part(part) => part,
        RangeAnswer::Unsatisfiable => {
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            set(
                response.headers_mut(),
                header::CONTENT_RANGE,
                format!("bytes */{length}"),
            );
            set(response.headers_mut(), header::CONTENT_LENGTH, "0".into());
            let whole = std::mem::replace(response.body_mut(), empty());
            drain(whole);
            return reply;
        }
    };
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    let content_range = format!("bytes {}-{}/{length}", part.start, part.end - 1);
    set(response.headers_mut(), header::CONTENT_RANGE, content_range);
    set(
        response.headers_mut(),
        header::CONTENT_LENGTH,
        part.len().to_string(),
    );
    let whole = std::mem::replace(response.body_mut(), empty());
    *response.body_mut() = RangeBody {
        inner: Some(whole),
        offset: 0,
        part,
    }
    .boxed_unsync();
    reply
}

fn set(headers: &mut http::HeaderMap, name: header::HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Reads the rest of a body on a task of its own, so that the flight it comes from completes
/// (and is stored) after the client has what it asked for.
fn drain(mut body: ProxyBody) {
    tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
}

/// The bytes `part` of a body, by their offsets in it.
struct RangeBody {
    inner: Option<ProxyBody>,
    offset: usize,
    part: std::ops::Range<usize>,
}

impl Body for RangeBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        loop {
            if self.offset >= self.part.end {
                if let Some(rest) = self.inner.take() {
                    drain(rest);
                }
                return Poll::Ready(None);
            }
            let Some(inner) = self.inner.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match std::task::ready!(Pin::new(inner).poll_frame(cx)) {
                None => return Poll::Ready(None),
                Some(Err(err)) => return Poll::Ready(Some(Err(err))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            };
            let start = self.offset;
            let end = start + data.len();
            self.offset = end;
            let from = self.part.start.max(start);
            let to = self.part.end.min(end);
            if from < to {
                // The range's last byte: hand the rest to the drain now. hyper polls no
                // further than the Content-Length it was given, so a body that waited to be
                // polled once more would never finish its flight (nor be stored).
                if end >= self.part.end {
                    if let Some(rest) = self.inner.take() {
                        drain(rest);
                    }
                }
                return Poll::Ready(Some(Ok(Frame::data(data.slice(from - start..to - start)))));
            }
        }
    }
}
