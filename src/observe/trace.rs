//! Traces over OTLP/HTTP (off unless `[tracing] otlp` is set): a span per request, a span per
//! upstream fetch, and the thing only a coalescing proxy can show: each follower's span links
//! to the fetch of the flight it waited on.
//!
//! W3C Trace Context (`traceparent`): a client's context is continued; a request without one
//! starts a trace, sampled at the configured ratio (a client's sampled flag is obeyed). The
//! fetch's context is what goes upstream. Finished spans go to a bounded queue (a full queue
//! drops, and counts, rather than slowing requests) that one task sends in batches as OTLP
//! protobuf (`opentelemetry-proto`'s messages) to `{otlp}/v1/traces`. With tracing off, the
//! request path pays one branch on a `None`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderValue;
use http::{HeaderMap, Uri};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use tokio::sync::mpsc;

pub use crate::config::TracingConfig;

pub static TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The part of a span others refer to: its trace, its id, and whether it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl SpanContext {
    /// A `traceparent` value (W3C Trace Context §3.2): version 00, or a later version read as
    /// 00; all-zero ids are invalid.
    pub fn from_traceparent(value: &HeaderValue) -> Option<SpanContext> {
        let text = value.to_str().ok()?.trim();
        let mut parts = text.split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let trace_id: [u8; 16] = hex(trace)?.try_into().ok()?;
        let span_id: [u8; 8] = hex(parent)?.try_into().ok()?;
        let flags = *hex(flags)?.first()?;
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(SpanContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    pub fn traceparent(&self) -> HeaderValue {
        let mut text = String::with_capacity(55);
        text.push_str("00-");
        push_hex(&mut text, &self.trace_id);
        text.push('-');
        push_hex(&mut text, &self.span_id);
        text.push_str(if self.sampled { "-01" } else { "-00" });
        HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// A new span in the same trace.
    pub fn child(&self) -> SpanContext {
        SpanContext {
            span_id: random_id(),
            ..*self
        }
    }
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn push_hex(text: &mut String, bytes: &[u8]) {
    use std::fmt::Write;
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
}

fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    while id == [0u8; N] {
        let _ = getrandom::fill(&mut id);
    }
    id
}

/// A span's kind, as OTLP numbers them.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Server = 2,
    Client = 3,
}

/// A finished span, on its way to the exporter.
#[derive(Debug)]
pub struct FinishedSpan {
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    pub name: &'static str,
    pub kind: Kind,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<(&'static str, Attribute)>,
    pub links: Vec<SpanContext>,
    pub error: bool,
}

#[derive(Debug)]
pub enum Attribute {
    Text(String),
    Int(i64),
}

/// Starts spans and hands finished ones to the exporter.
#[derive(Debug)]
pub struct Tracer {
    sample: f64,
    queue: mpsc::Sender<FinishedSpan>,
    pub dropped: AtomicU64,
}

impl Tracer {
    /// The tracer and the exporter task to spawn.
    pub fn new(config: &TracingConfig) -> (Tracer, impl std::future::Future<Output = ()>) {
        let (queue, spans) = mpsc::channel(8192);
        let tracer = Tracer {
            sample: config.sample,
            queue,
            dropped: AtomicU64::new(0),
        };
        (tracer, export(config.clone(), spans))
    }

    /// The server span for a request with `headers`: its context, and its parent's span id
    /// when a client's `traceparent` continues a trace. `None` when it is not sampled.
    pub fn start_server(&self, headers: &HeaderMap) -> Option<(SpanContext, Option<[u8; 8]>)> {
        match headers
            .get(&TRACEPARENT)
            .and_then(SpanContext::from_traceparent)
        {
            Some(parent) => parent
                .sampled
                .then(|| (parent.child(), Some(parent.span_id))),
            None => {
                let trace_id: [u8; 16] = random_id();
                // The trace id's last 8 bytes as a number, against the ratio (as the W3C
                // random trace-id flag lets samplers do).
                let draw = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or_default());
                let sampled = (draw as f64) < self.sample * u64::MAX as f64;
                sampled.then(|| {
                    let context = SpanContext {
                        trace_id,
                        span_id: random_id(),
                        sampled: true,
                    };
                    (context, None)
                })
            }
        }
    }

    pub fn finish(&self, span: FinishedSpan) {
        if self.queue.try_send(span).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// When something started, as a wall-clock time, from how long ago it was.
pub fn started(elapsed: Duration) -> SystemTime {
    SystemTime::now() - elapsed
}

/// Sends finished spans in batches (up to 512, or what came within a second).
async fn export(config: TracingConfig, mut spans: mpsc::Receiver<FinishedSpan>) {
    let mut batch = Vec::new();
    loop {
        let Some(first) = spans.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while batch.len() < 512 {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = encode(&config, std::mem::take(&mut batch));
        if let Err(err) = post(&config.otlp, body).await {
            // A collector that is down: one line per 10 s, saying how many were held back.
            let what = "could not send spans to the [tracing] otlp collector";
            super::failure_log::upstream_failed("[tracing]", "otlp", &err, what);
        }
    }
}

fn encode(config: &TracingConfig, batch: Vec<FinishedSpan>) -> Vec<u8> {
    let text = |value: &str| AnyValue {
        value: Some(any_value::Value::StringValue(value.to_owned())),
    };
    let attribute = |key: &str, value: AnyValue| KeyValue {
        key: key.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    let nanos = |at: SystemTime| {
        at.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    };
    let spans = batch
        .into_iter()
        .map(|span| Span {
            trace_id: span.context.trace_id.to_vec(),
            span_id: span.context.span_id.to_vec(),
            parent_span_id: span.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: 1,
            name: span.name.to_owned(),
            kind: span.kind as i32,
            start_time_unix_nano: nanos(span.start),
            end_time_unix_nano: nanos(span.end),
            attributes: span
                .attributes
                .into_iter()
                .map(|(key, value)| {
                    let value = match value {
                        Attribute::Text(t) => text(&t),
                        Attribute::Int(n) => AnyValue {
                            value: Some(any_value::Value::IntValue(n)),
                        },
                    };
                    attribute(key, value)
                })
                .collect(),
            links: span
                .links
                .iter()
                .map(|link| span::Link {
                    trace_id: link.trace_id.to_vec(),
                    span_id: link.span_id.to_vec(),
                    flags: 1,
                    ..Default::default()
                })
                .collect(),
            status: span.error.then(|| Status {
                code: 2,
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", text(&config.service_name))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "coalesce-proxy".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// One POST of a batch over a connection of its own (a batch a second at most: no pool).
async fn post(collector: &Uri, body: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
    use http_body_util::{BodyExt, Full};
    let authority = collector
        .authority()
        .ok_or("the collector URL has no host")?;
    let port = authority.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((authority.host(), port)).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let base = collector.path().trim_end_matches('/');
    let request = http::Request::post(format!("{base}/v1/traces"))
        .header(http::header::HOST, authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(bytes::Bytes::from(body)))?;
    let response =
        tokio::time::timeout(Duration::from_secs(10), sender.send_request(request)).await??;
    let status = response.status();
    let _ = response.into_body().collect().await;
    if !status.is_success() {
        return Err(format!("the collector answered {status}").into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w3c_trace_context_traceparent_read_and_written() {
        let value =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let context = SpanContext::from_traceparent(&value).expect("valid");
        assert!(context.sampled);
        assert_eq!(
            context.span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(context.traceparent(), value);
        for invalid in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ] {
            let value = HeaderValue::from_static(invalid);
            assert_eq!(SpanContext::from_traceparent(&value), None, "{invalid}");
        }
        let child = context.child();
        assert_eq!(child.trace_id, context.trace_id);
        assert_ne!(child.span_id, context.span_id);
    }

    #[test]
    fn a_clients_sampled_flag_decides_and_new_traces_follow_the_ratio() {
        let config = TracingConfig {
            otlp: Uri::from_static("http://127.0.0.1:4318"),
            sample: 0.0,
            service_name: "t".into(),
        };
        let (never, _) = Tracer::new(&config);
        assert!(never.start_server(&HeaderMap::new()).is_none());
        let mut headers = HeaderMap::new();
        headers.insert(
            &TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        let (context, parent) = never.start_server(&headers).expect("the client's flag");
        assert_eq!(
            parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(context.trace_id[0], 0x4b);
        let (always, _) = Tracer::new(&TracingConfig {
            sample: 1.0,
            ..config
        });
        assert!(always.start_server(&HeaderMap::new()).is_some());
    }
}
