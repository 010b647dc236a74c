//! The body a flight's fetch reads on any route: the upstream's as it is; the upstream's
//! recorded for the fleet while this proxy holds the key's lease; or a response another
//! proxy fetched, whole from Redis.
//!
//! Recording keeps the chunks (reference-counted, as the flight does) up to `body_max`, and
//! writes the verdict when the body ends: the response, or a release when it grew past
//! `body_max`, failed, or was dropped before its end.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};

use super::entry::SharedResponse;
use super::lease::Lease;
use crate::sharing::{grpc_error, Sharing};
use crate::upstream::{FetchError, UpstreamBody};

/// The body of a flight's fetch.
pub enum FetchBody {
    Upstream(UpstreamBody),
    /// Boxed: only a lease holder's flight carries a recorder.
    Recording(Box<Recording>),
    /// A response from the fleet: its body, then its trailers.
    Shared(Option<Bytes>, Option<HeaderMap>),
}

/// The upstream's body, and what the lease holder keeps of it until it ends.
pub struct Recording {
    body: UpstreamBody,
    recorder: Recorder,
}

struct Recorder {
    lease: Option<Lease>,
    response: SharedResponse,
    chunks: Vec<Bytes>,
    bytes: u64,
    body_max: u64,
    /// How long Redis keeps the response (its freshness, when the route caches).
    keep: Duration,
    /// A gRPC response under `share_errors = false`: an error status in its trailers
    /// releases the waiters instead.
    status_in_trailers: bool,
}

impl Lease {
    /// The body to read for the holder's response: recorded when the fleet may have it,
    /// else the lease is released now and the body passes as it is.
    pub fn record(
        self,
        body: FetchBody,
        status: StatusCode,
        headers: &HeaderMap,
        sharing: &Sharing,
    ) -> FetchBody {
        let body = match body.into_upstream() {
            Ok(body) => body,
            Err(other) => {
                self.release();
                return other;
            }
        };
        let body_max = self.context.body_max;
        let too_long = body.size_hint().lower() > body_max;
        if !sharing.shareable() || too_long {
            self.release();
            return FetchBody::Upstream(body);
        }
        let mut varied = HeaderMap::new();
        for name in &sharing.vary {
            for value in self.request_headers().get_all(name) {
                varied.append(name.clone(), value.clone());
            }
        }
        let keep = self.context.keep(status, headers);
        let response = SharedResponse {
            key: self.context.fleet_key.clone(),
            received_at: SystemTime::now(),
            status,
            headers: headers.clone(),
            varied,
            body: Bytes::new(),
            trailers: None,
        };
        let recorder = Recorder {
            lease: Some(self),
            response,
            chunks: Vec::new(),
            bytes: 0,
            body_max,
            keep,
            status_in_trailers: sharing.status_in_trailers,
        };
        FetchBody::Recording(Box::new(Recording { body, recorder }))
    }
}

impl Recorder {
    fn data(&mut self, data: &Bytes) {
        if self.lease.is_none() {
            return;
        }
        self.bytes += data.len() as u64;
        if self.bytes > self.body_max {
            self.release();
        } else {
            self.chunks.push(data.clone());
        }
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if self.status_in_trailers && grpc_error(trailers) {
            self.release();
        } else {
            self.response.trailers = Some(trailers.clone());
        }
    }

    fn release(&mut self) {
        self.chunks.clear();
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }

    /// The body's end: the response goes to the fleet.
    fn finish(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let mut body = BytesMut::with_capacity(self.bytes as usize);
        for chunk in self.chunks.drain(..) {
            body.extend_from_slice(&chunk);
        }
        let mut response = std::mem::replace(
            &mut self.response,
            SharedResponse {
                key: Vec::new(),
                received_at: SystemTime::UNIX_EPOCH,
                status: StatusCode::OK,
                headers: HeaderMap::new(),
                varied: HeaderMap::new(),
                body: Bytes::new(),
                trailers: None,
            },
        );
        response.body = body.freeze();
        lease.share(response, self.keep);
    }
}

impl FetchBody {
    /// The upstream's body, when this is it (unrecorded).
    #[allow(clippy::result_large_err)] // moved once per lease holder's response
    fn into_upstream(self) -> Result<UpstreamBody, FetchBody> {
        match self {
            FetchBody::Upstream(body) => Ok(body),
            other => Err(other),
        }
    }
}

impl Body for FetchBody {
    type Data = Bytes;
    type Error = FetchError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FetchError>>> {
        match self.get_mut() {
            FetchBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            FetchBody::Recording(recording) => {
                let Recording { body, recorder } = &mut **recording;
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            recorder.data(data);
                        } else if let Some(trailers) = frame.trailers_ref() {
                            recorder.trailers(trailers);
                        }
                        // The flight stops reading at a Content-Length body's last byte.
                        if body.is_end_stream() {
                            recorder.finish();
                        }
                    }
                    Poll::Ready(None) => recorder.finish(),
                    Poll::Ready(Some(Err(_))) => recorder.release(),
                    Poll::Pending => {}
                }
                polled
            }
            FetchBody::Shared(data, trailers) => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FetchBody::Upstream(body) => body.is_end_stream(),
            FetchBody::Recording(recording) => recording.body.is_end_stream(),
            FetchBody::Shared(data, trailers) => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FetchBody::Upstream(body) => body.size_hint(),
            FetchBody::Recording(recording) => recording.body.size_hint(),
            FetchBody::Shared(data, trailers) => {
                let len = data.as_ref().map_or(0, |d| d.len() as u64);
                match trailers {
                    None => SizeHint::with_exact(len),
                    Some(_) => {
                        let mut hint = SizeHint::new();
                        hint.set_lower(len);
                        hint
                    }
                }
            }
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        // Dropped at its end without a last poll (an empty body, a Content-Length body whose
        // last byte was read): still a whole response. Otherwise the lease's drop releases.
        if self.body.is_end_stream() {
            self.recorder.finish();
        }
    }
}
