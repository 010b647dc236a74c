//! Upstreams that follow DNS (`resolve_interval`, `[resolver] nameservers`), against a DNS
//! server this test starts on 127.0.0.1: every record becomes an address, records that go
//! are drained and new ones join, and a failing DNS keeps the last good set.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use coalesce_proxy::tools::origin::{self, Origin, OriginSettings};
use http::StatusCode;
use tokio::net::UdpSocket;

use crate::util::*;

/// A DNS server answering A queries from a table the test changes, over UDP on 127.0.0.1.
#[derive(Clone, Default)]
struct TestDns {
    records: Arc<Mutex<HashMap<String, Vec<Ipv4Addr>>>>,
    /// Answer SERVFAIL to everything while set.
    failing: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
}

impl TestDns {
    async fn start() -> (TestDns, SocketAddr) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
        let address = socket.local_addr().expect("address");
        let dns = TestDns::default();
        let server = dns.clone();
        tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            while let Ok((n, peer)) = socket.recv_from(&mut buffer).await {
                if let Some(answer) = server.answer(&buffer[..n]) {
                    let _ = socket.send_to(&answer, peer).await;
                }
            }
        });
        (dns, address)
    }

    fn set(&self, name: &str, ips: &[Ipv4Addr]) {
        self.records
            .lock()
            .unwrap()
            .insert(name.to_owned(), ips.to_vec());
    }

    /// The response to one query (RFC 1035 §4.1): the question echoed, and an A record with
    /// TTL 0 per address when the question asks for A; no records for AAAA.
    fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        self.queries.fetch_add(1, Ordering::SeqCst);
        let (name, question_end) = question_name(query)?;
        let qtype = u16::from_be_bytes([query[question_end], query[question_end + 1]]);
        let question = &query[12..question_end + 4];
        let ips = match qtype {
            1 => self.records.lock().unwrap().get(&name).cloned(),
            _ => Some(Vec::new()),
        };
        let rcode = if self.failing.load(Ordering::SeqCst) {
            2 // SERVFAIL
        } else if ips.is_none() {
            3 // NXDOMAIN
        } else {
            0
        };
        let ips = ips.unwrap_or_default();
        let mut out = Vec::new();
        out.extend_from_slice(&query[..2]); // id
        out.extend_from_slice(&[0x81 | (query[2] & 0x01), 0x80 | rcode]); // QR, RD, RA
        out.extend_from_slice(&1u16.to_be_bytes()); // one question
        let answers = if rcode == 0 { ips.len() as u16 } else { 0 };
        out.extend_from_slice(&answers.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]); // no authority or additional records
        out.extend_from_slice(question);
        for ip in ips.iter().take(answers as usize) {
            out.extend_from_slice(&[0xc0, 12]); // the name: a pointer to the question's
            out.extend_from_slice(&[0, 1, 0, 1]); // A, IN
            out.extend_from_slice(&0u32.to_be_bytes()); // TTL 0
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
        Some(out)
    }
}

/// The question's name (lower case, no trailing dot) and where its labels end.
fn question_name(query: &[u8]) -> Option<(String, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
        at += len;
    }
    query.get(at + 3)?;
    Some((labels.join("."), at))
}

/// Two origins on one port, at 127.0.0.1 and 127.0.0.2 (all of 127/8 is loopback on Linux).
async fn two_origins() -> (Origin, Origin) {
    let first = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let port = first.addr().port();
    let second = Origin::start_on(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), port),
        OriginSettings::default(),
    )
    .await
    .expect("origin on 127.0.0.2");
    (first, second)
}

fn addresses(h: &Harness) -> f64 {
    metric(
        &h.proxy.render_metrics(),
        "coalesce_proxy_upstream_addresses{upstream=\"origin\"}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_an_address_a_gone_record_drains_and_a_dns_failure_keeps_the_last_set() {
    let (dns, nameserver) = TestDns::start().await;
    let (first, second) = two_origins().await;
    let (a, b) = (Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2));
    dns.set("backend.test", &[a, b]);
    let port = first.addr().port();
    let h = Harness::start_in_front_of(first, |_| {
        config_text(
            &format!("http://backend.test:{port}"),
            "resolve_interval = \"100ms\"",
            &format!("[resolver]\nnameservers = [\"{nameserver}\"]"),
        )
    })
    .await;

    // The first requests wait for the first answer, then alternate over both records.
    for i in 0..10 {
        let reply = get(h.addr, &format!("/spread-{i}?size=10")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body(), &origin::body(10));
    }
    assert_eq!((h.origin.hits(), second.hits()), (5, 5));
    assert_eq!(addresses(&h), 2.0);
    // The backend sees the name it was configured with, not an IP address.
    let reply = get(h.addr, "/echo-host?echo_header=host").await;
    assert_eq!(
        reply.body().as_ref(),
        format!("host=backend.test:{port}").as_bytes()
    );

    // Two requests under way, one at each address (round robin), when 127.0.0.2's record goes.
    let (first_before, second_before) = (h.origin.hits(), second.hits());
    let held: Vec<_> = (0..2)
        .map(|i| {
            let addr = h.addr;
            tokio::spawn(
                async move { get(addr, &format!("/held-{i}?size=2000&hold_head=g")).await },
            )
        })
        .collect();
    assert!(
        eventually(|| h.origin.hits() > first_before && second.hits() > second_before).await,
        "one held request at each address"
    );
    dns.set("backend.test", &[a]);
    assert!(eventually(|| addresses(&h) == 1.0).await, "127.0.0.2 left");
    let second_hits = second.hits();
    for i in 0..6 {
        assert_eq!(
            get(h.addr, &format!("/after-{i}")).await.status,
            StatusCode::OK
        );
    }
    assert_eq!(
        second.hits(),
        second_hits,
        "no new request reaches a gone record"
    );
    // The request at the gone address finishes there, every byte.
    h.origin.open_gate("g");
    second.open_gate("g");
    for reply in held {
        assert_eq!(reply.await.expect("task").body(), &origin::body(2000));
    }

    // DNS fails: the last good set stays and keeps serving.
    dns.failing.store(true, Ordering::SeqCst);
    let queries = dns.queries.load(Ordering::SeqCst);
    assert!(eventually(|| dns.queries.load(Ordering::SeqCst) >= queries + 3).await);
    assert_eq!(addresses(&h), 1.0);
    assert_eq!(get(h.addr, "/during-outage").await.status, StatusCode::OK);

    // A new record joins once DNS answers again.
    dns.failing.store(false, Ordering::SeqCst);
    dns.set("backend.test", &[a, b]);
    assert!(
        eventually(|| addresses(&h) == 2.0).await,
        "127.0.0.2 joined again"
    );
}
