//! Traces over OTLP/HTTP against a real receiver: a small OTLP/HTTP server here that decodes
//! what the proxy sends with the OpenTelemetry protocol crate. A herd of 20 clients, each with
//! its own W3C `traceparent`, gives one upstream fetch span under the leader's span, and 19
//! follower spans linked to it, every span in its own client's trace.

use std::convert::Infallible;

use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::sync::mpsc;

use coalesce_proxy::tools::origin::OriginSettings;

use crate::util::*;

/// An OTLP/HTTP receiver on 127.0.0.1: its URL, and the spans it decodes, as they come.
async fn receiver() -> (String, mpsc::UnboundedReceiver<Span>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let (spans_tx, spans) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let spans_tx = spans_tx.clone();
            let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let spans_tx = spans_tx.clone();
                async move {
                    assert_eq!(request.uri().path(), "/v1/traces");
                    assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .expect("body")
                        .to_bytes();
                    let export = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                    for resource in export.resource_spans {
                        for scope in resource.scope_spans {
                            for span in scope.spans {
                                let _ = spans_tx.send(span);
                            }
                        }
                    }
                    Ok::<_, Infallible>(http::Response::new(Full::new(bytes::Bytes::new())))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (url, spans)
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(Value::StringValue(text)) => text.clone(),
        other => panic!("{key} is {other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_gives_one_fetch_span_and_every_follower_links_to_it() {
    let (collector, mut spans) = receiver().await;
    let tracing = format!("[tracing]\notlp = \"{collector}\"\nsample = 1.0\n");
    let h = Harness::start_with(OriginSettings::default(), "", &tracing).await;
    // Each client its own trace: trace id i, parent span id i.
    let parent = |i: usize| format!("00-{:032x}-{:016x}-01", i + 1, i + 100);
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let addr = h.addr;
            tokio::spawn(async move {
                get_with(addr, "/traced?hold_head=g", &[("traceparent", &parent(i))]).await
            })
        })
        .collect();
    h.open_when_followers(19, "g").await;
    for client in clients {
        assert_eq!(client.await.expect("client").status, http::StatusCode::OK);
    }
    let mut received = Vec::new();
    while received.len() < 21 {
        let span = tokio::time::timeout(PATIENCE, spans.recv())
            .await
            .expect("spans in time")
            .expect("the receiver runs");
        received.push(span);
    }
    let (fetches, servers): (Vec<Span>, Vec<Span>) = received
        .into_iter()
        .partition(|s| s.name == "upstream fetch");
    assert_eq!(fetches.len(), 1, "one upstream fetch for the herd");
    assert_eq!(servers.len(), 20);
    let fetch = &fetches[0];
    assert_eq!(fetch.kind, 3, "client");
    assert_eq!(
        attribute(fetch, "coalesce.fanout"),
        Some(&Value::IntValue(19))
    );
    // The fetch's context is what the origin saw.
    let sent = h.origin.requests().pop().expect("the fetch");
    let traceparent = format!("00-{}-{}-01", hex(&fetch.trace_id), hex(&fetch.span_id));
    assert_eq!(sent.header("traceparent"), Some(traceparent.as_str()));
    let leader = servers
        .iter()
        .find(|s| text(s, "coalesce.role") == "leader")
        .expect("the leader's span");
    assert_eq!(
        fetch.trace_id, leader.trace_id,
        "the fetch is in the leader's trace"
    );
    assert_eq!(
        fetch.parent_span_id, leader.span_id,
        "under the leader's span"
    );
    assert!(leader.links.is_empty());
    let mut followers = 0;
    for server in &servers {
        assert_eq!(server.kind, 2, "server");
        // Its client's trace, continued under the client's span.
        let client = (0..20)
            .find(|i| hex(&server.trace_id) == format!("{:032x}", i + 1))
            .expect("a client's trace");
        assert_eq!(
            hex(&server.parent_span_id),
            format!("{:016x}", client + 100)
        );
        assert_eq!(text(server, "url.path"), "/traced");
        if text(server, "coalesce.role") == "follower" {
            followers += 1;
            assert_eq!(server.links.len(), 1);
            assert_eq!(server.links[0].trace_id, fetch.trace_id);
            assert_eq!(server.links[0].span_id, fetch.span_id);
            assert_eq!(
                attribute(server, "coalesce.flight"),
                attribute(leader, "coalesce.flight")
            );
        }
    }
    assert_eq!(followers, 19);
}

/// Off unless configured, and a client that says it does not sample is not recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_client_is_not_recorded_and_its_traceparent_passes_through() {
    let (collector, mut spans) = receiver().await;
    let tracing = format!("[tracing]\notlp = \"{collector}\"\nsample = 1.0\n");
    let h = Harness::start_with(OriginSettings::default(), "", &tracing).await;
    let unsampled = "00-0000000000000000000000000000abcd-000000000000abcd-00";
    let reply = get_with(h.addr, "/quiet", &[("traceparent", unsampled)]).await;
    assert_eq!(reply.status, http::StatusCode::OK);
    let sent = h.origin.requests().pop().expect("the fetch");
    assert_eq!(sent.header("traceparent"), Some(unsampled));
    // A traced request after it: its spans are the only ones that arrive.
    get(h.addr, "/loud").await;
    let first = tokio::time::timeout(PATIENCE, spans.recv())
        .await
        .expect("a span")
        .expect("the receiver runs");
    assert_ne!(hex(&first.trace_id), "0000000000000000000000000000abcd");
}
