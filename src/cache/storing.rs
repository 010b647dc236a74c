//! Storing what a fetch brings: decided when the response head arrives ([`StorePlan`]), done
//! by the response body itself ([`StoringBody`]) as its last byte goes by, so the cache is
//! written from this layer whoever reads the body (a flight, a background refresh).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::{request, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::freshness::{freshness, Freshness};
use super::lookup::cacheable_request;
use super::partial::{combine, Part};
use super::store::ResponseCache;
use super::stored::StoredResponse;
use crate::sharing::Key;

/// What a fetch needs to store the response to its request: only a GET for the plain
/// resource, or for a range that completes a stored part, on a route with a cache.
pub struct StorePlan {
    cache: Arc<ResponseCache>,
    /// The request's cache key.
    key: Key,
    request_headers: HeaderMap,
    /// When the request was about to go upstream: a response to it is not stored if its
    /// resource was invalidated after this (RFC 9111 §4.4).
    sent: Instant,
    /// The stored part a range request completes: a 206 for the same representation is
    /// combined with it.
    completing: Option<Arc<StoredResponse>>,
}

impl StorePlan {
    /// The plan for `parts`, when a response to it may be stored: a plain GET, or a range
    /// request that completes `partial` (`Miss::partial`).
    pub fn for_request(
        cache: &Arc<ResponseCache>,
        key: Key,
        parts: &request::Parts,
        partial: Option<&Arc<StoredResponse>>,
    ) -> Option<StorePlan> {
        let storable = cacheable_request(parts) || partial.is_some();
        (parts.method == Method::GET && storable).then(|| StorePlan {
            cache: cache.clone(),
            key,
            request_headers: parts.headers.clone(),
            sent: Instant::now(),
            completing: partial.cloned(),
        })
    }

    /// Decides on the response head. A 304 to a revalidation renews `revalidating` at once and
    /// leaves nothing to store; any other response gets a [`PendingStore`] for its body when it
    /// may be stored (shareable, a cacheable status, fresh for a while).
    pub fn after_head(
        self,
        status: StatusCode,
        headers: &HeaderMap,
        shareable: bool,
        revalidating: Option<Arc<StoredResponse>>,
    ) -> Option<PendingStore> {
        let policy = self.cache.policy();
        let has_authorization = self.request_headers.contains_key(header::AUTHORIZATION);
        if status == StatusCode::NOT_MODIFIED {
            let entry = revalidating?;
            let (headers, fresh) = entry.renewed_by(headers, policy, has_authorization)?;
            let renewed = StoredResponse::new(entry.status, headers, entry.body.clone(), fresh)
                .with_part(entry.part);
            self.cache
                .store(self.key, &self.request_headers, self.sent, renewed);
            return None;
        }
        // A gRPC error is an error whatever its HTTP status (200): never stored.
        if !shareable || crate::sharing::grpc_error(headers) {
            return None;
        }
        // A 206 is stored as the one part its Content-Range names, or not at all. A range
        // request stores only a part or the whole: its 416, say, is no answer for the resource.
        let part = match status {
            StatusCode::PARTIAL_CONTENT => Some(Part::of(headers)?),
            StatusCode::OK => None,
            _ if self.completing.is_some() => return None,
            _ => None,
        };
        let fresh = freshness(policy, status, headers, has_authorization)?;
        Some(PendingStore {
            plan: self,
            status,
            headers: headers.clone(),
            fresh,
            part,
        })
    }
}

/// A response head that may be stored once its whole body is in.
pub struct PendingStore {
    plan: StorePlan,
    status: StatusCode,
    headers: HeaderMap,
    fresh: Freshness,
    /// For a 206: the part it is, and how many bytes its body must have.
    part: Option<(Part, u64)>,
}

impl PendingStore {
    fn store(self, body: Bytes) {
        let plan = self.plan;
        let entry = match self.part {
            None => StoredResponse::new(self.status, self.headers, body, self.fresh),
            Some((_, len)) if body.len() as u64 != len => return,
            Some((part, _)) => {
                let combined = plan.completing.as_deref().and_then(|stored| {
                    let has_authorization =
                        plan.request_headers.contains_key(header::AUTHORIZATION);
                    combined(
                        stored,
                        (&self.headers, part, &body),
                        &plan.cache,
                        has_authorization,
                    )
                });
                combined.unwrap_or_else(|| {
                    StoredResponse::new(self.status, self.headers, body, self.fresh)
                        .with_part(Some(part))
                })
            }
        };
        plan.cache
            .store(plan.key, &plan.request_headers, plan.sent, entry);
    }
}

/// A stored part and a new one as one stored response (RFC 9111 §3.4), fresh as the combined
/// fields say; `None` when they are not parts of one representation next to each other.
fn combined(
    stored: &StoredResponse,
    new: (&HeaderMap, Part, &Bytes),
    cache: &ResponseCache,
    has_authorization: bool,
) -> Option<StoredResponse> {
    let stored_part = (&stored.headers, stored.part?, &stored.body);
    let (status, headers, part, body) = combine(stored_part, new)?;
    let fresh = freshness(cache.policy(), status, &headers, has_authorization)?;
    Some(StoredResponse::new(status, headers, body, fresh).with_part(part))
}

/// A response body that stores the response when its last byte goes by, if it has a
/// [`PendingStore`] and the body stays within `limit` (`max_replay_body`). A Content-Length
/// body is stored *before* its last chunk is handed on, so no client can read the whole
/// response and ask again before the entry exists. The chunks it keeps are the same `Bytes` the
/// reader gets (reference counts), copied once into one buffer when stored.
pub struct StoringBody<B> {
    inner: B,
    /// Boxed: most bodies store nothing, and this keeps them small.
    storing: Option<Box<Storing>>,
}

struct Storing {
    pending: PendingStore,
    chunks: Vec<Bytes>,
    bytes: u64,
    limit: u64,
}

impl<B> StoringBody<B> {
    pub fn new(inner: B, pending: Option<PendingStore>, limit: u64) -> StoringBody<B> {
        StoringBody {
            inner,
            storing: pending.map(|pending| {
                Box::new(Storing {
                    pending,
                    chunks: Vec::new(),
                    bytes: 0,
                    limit,
                })
            }),
        }
    }

    fn finish(&mut self) {
        if let Some(storing) = self.storing.take() {
            let body = match storing.chunks.as_slice() {
                [] => Bytes::new(),
                [one] => one.clone(),
                many => {
                    let mut body = BytesMut::with_capacity(storing.bytes as usize);
                    for chunk in many {
                        body.extend_from_slice(chunk);
                    }
                    body.freeze()
                }
            };
            storing.pending.store(body);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for StoringBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Some(storing) = self.storing.as_mut() else {
            return polled;
        };
        match &polled {
            // A body that ends with trailers is not stored: a stored response is served
            // whole, as a range, to HEAD and as a 304, and its trailers (gRPC's status among
            // them) would be lost on all of them; RFC 9111 §3 lets a cache discard trailers,
            // but a response without its `grpc-status` is not the response.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => self.storing = None,
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    storing.bytes += data.len() as u64;
                    if storing.bytes > storing.limit {
                        self.storing = None;
                        return polled;
                    }
                    storing.chunks.push(data.clone());
                }
                if self.inner.is_end_stream() {
                    self.finish();
                }
            }
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.storing = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
