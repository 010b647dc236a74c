//! A flight's fetch task: it waits for the upstream's head, publishes it once, copies every
//! body chunk into the flight (pausing while the flight's buffer is full), then publishes the
//! end and takes the flight out of the table.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http_body::Body;
use http_body_util::BodyExt;

use super::coordinator::Coordinator;
use super::flight::{FetchFuture, Flight, SharedHead};
use super::status::Lead;
use super::subscription::Subscription;
use crate::sharing::Sharing;
use crate::upstream::FetchError;

/// What a flight's fetch produces: the upstream response (head received and cleaned, body to
/// come) and the verdict on who may share it.
pub struct Fetched<B> {
    pub response: Response<B>,
    pub sharing: Sharing,
    /// The cache will store the response once its body is in (`Cache-Status: stored`).
    pub stored: bool,
}

impl Lead {
    /// Starts the flight's fetch (run by the leader while nobody else reads, on a task of its
    /// own once someone does: `flight::driver`), and returns the leader's subscription.
    pub fn start<Fut, B>(mut self, fetch: Pin<Box<Fut>>) -> Subscription
    where
        Fut: Future<Output = Result<Fetched<B>, FetchError>> + Send + 'static,
        B: Body<Data = Bytes, Error = FetchError> + Send + Unpin + 'static,
    {
        let flight = self.flight.clone();
        // Only `start` takes it before the drop, and `start` consumes the lead.
        let coordinator = self.coordinator.take().expect("a lead starts once");
        // The fetch comes boxed (its maker boxes it where it is made, so its 2.7 KB are not
        // made on the stack and then copied into a box here), and the driver around it is
        // boxed again: the leader runs the driver inline, or it moves to a task when someone
        // joins (`flight::driver`), and moving it costs a pointer. Boxed first, the fetch sits
        // in the driver once, as a pointer; passed by value it would sit there three times
        // (captured, `drive`'s argument, awaited: 8.5 KB, copied whole into the box).
        let whole: FetchFuture = Box::pin({
            let flight = flight.clone();
            let coordinator = coordinator.clone();
            async move {
                let end = drive(&coordinator, &flight, fetch).await;
                coordinator.finish(&flight, end.map_err(Into::into));
            }
        });
        flight.start_fetch(whole);
        Subscription::leader(coordinator, flight)
    }
}

/// The fetch task's work: wait for the head, then copy every body chunk into the flight,
/// pausing until the flight's buffer has room for it.
async fn drive<Fut, B>(
    coordinator: &Coordinator,
    flight: &Arc<Flight>,
    fetch: Fut,
) -> Result<(), FetchError>
where
    Fut: Future<Output = Result<Fetched<B>, FetchError>>,
    B: Body<Data = Bytes, Error = FetchError> + Unpin,
{
    let Fetched {
        response,
        sharing,
        stored,
    } = fetch.await?;
    let (parts, mut body) = response.into_parts();
    let shareable = sharing.shareable();
    let matched_rule = sharing.matched_rule.clone();
    // The leader's response gets the fields as received, the others a copy: the proxy then
    // adds its own to each, and the map as received has room for them where a copy has
    // none (a copy that grows moves every field to a larger table).
    let head = SharedHead {
        status: parts.status,
        headers: parts.headers.clone(),
        sharing,
        stored,
        empty: body.is_end_stream(),
    };
    flight.publish_head(head, parts.headers);
    if let Some(rule) = matched_rule {
        tracing::debug!(route = %flight.scope.route, path = flight.key.path(), rule, "response not shareable; releasing followers");
        coordinator.remember_pass(flight);
    } else if !shareable {
        // New requests must not queue behind a response only the leader may have.
        coordinator.forget(flight);
    }
    while let Some(frame) = body.frame().await {
        let data = match frame?.into_data() {
            Ok(data) => data,
            // The last frame: every reader gets them after its last chunk (gRPC's status
            // is in them). A reader whose hop cannot carry them has them dropped by hyper.
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    flight.publish_trailers(trailers);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        if flight.make_room(data.len() as u64).await {
            coordinator.forget(flight);
        }
        flight.publish_chunk(data);
        if body.is_end_stream() {
            // A Content-Length body's last byte: end now, in the same poll, rather than when
            // the body is polled once more. hyper stops reading a response once it has written
            // Content-Length bytes, so a leader running the fetch inline might never poll it
            // again, and a flight whose every client has its bytes must not end cancelled.
            break;
        }
    }
    Ok(())
}
