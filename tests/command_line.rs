//! The binary itself: `--check`, start-up errors, and draining on SIGTERM.

use std::process::Command;
use std::time::Duration;

use coalesce_proxy::origin::{self, Origin, OriginSettings};

use crate::util::*;

pub const BINARY: &str = env!("CARGO_BIN_EXE_coalesce-proxy");

pub fn write_config(text: &str) -> TempFile {
    TempFile::new("toml", text.as_bytes())
}

#[test]
fn check_accepts_the_shipped_configs() {
    for file in ["proxy.toml", "docker.toml"] {
        let path = format!("{}/config/{file}", env!("CARGO_MANIFEST_DIR"));
        let output = Command::new(BINARY)
            .args(["--config", &path, "--check"])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{file}: {stderr}");
    }
}

#[test]
fn a_bad_config_stops_start_up_before_binding() {
    let file =
        write_config("[server]\nlisten = \"127.0.0.1:0\"\n[upstreams.a]\nurl = \"ftp://x\"\n");
    let output = Command::new(BINARY)
        .arg("--config")
        .arg(&file.0)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&output.stderr).contains("listening"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let origin = Origin::start(OriginSettings {
        delay: Duration::from_millis(500),
        body_size: 3000,
    })
    .await
    .expect("origin");
    let file = write_config(
        &config_text(&origin.url(), "", "")
            .replace("shutdown_grace = \"2s\"", "shutdown_grace = \"10s\""),
    );
    let (mut child, mut lines) = spawn_with_log(
        Command::new(BINARY)
            .arg("--config")
            .arg(&file.0)
            .env("RUST_LOG", "info"),
    );
    let addr = listen_address(&mut lines).await;

    let in_flight = tokio::spawn(async move { get(addr, "/slow").await });
    assert!(origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());

    let reply = in_flight.await.expect("client");
    assert_eq!(reply.body(), &origin::body(3000));
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    let mut log = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(2), lines.recv()).await {
        log.push(line);
    }
    let log = log.join("\n");
    assert!(log.contains("open_connections=1"), "{log}");
    assert!(log.contains("all connections drained"), "{log}");
    // New connections are refused once draining started.
    assert!(std::net::TcpStream::connect(addr).is_err());
}
