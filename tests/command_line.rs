//! The binary itself: `--check`, start-up errors, and draining on SIGTERM.

use coalesce_proxy::tools::origin::{self, Origin, OriginSettings};
use std::process::Command;

use crate::util::*;

pub const BINARY: &str = env!("CARGO_BIN_EXE_coalesce-proxy");
pub const DEMO: &str = env!("CARGO_BIN_EXE_coalesce-demo");

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
fn demo_passes_when_every_client_gets_the_origins_bytes_and_fails_when_one_does_not() {
    let demo = |extra: &[&str]| {
        Command::new(DEMO)
            .args(["--clients", "50", "--origin-delay", "20ms", "--keys", "2"])
            .args(extra)
            .output()
            .expect("run")
    };
    let good = demo(&[]);
    let stdout = String::from_utf8_lossy(&good.stdout);
    assert_eq!(good.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("bodies: 50 of 50 identical"), "{stdout}");
    assert!(stdout.contains("upstream requests: 1\n"), "{stdout}");

    let bad = demo(&["--origin-fail", "reset_mid_body"]);
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("clients did not get the exact response"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&bad.stdout).contains("bodies: 0 of 50 identical"));
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
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let (_file, mut child, mut lines, addr) = start_binary(&origin, "20s").await;

    // The response is held at the origin until the test has seen the drain begin.
    let in_flight = tokio::spawn(async move { get(addr, "/slow?size=3000&hold_head=g").await });
    assert!(origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let drain = wait_for_line(&mut lines, "shutting down").await;
    assert!(drain.contains("open_connections=1"), "{drain}");
    // Draining: the in-flight request is still held, and new connections are refused.
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "a new connection was accepted while draining"
    );
    assert!(!in_flight.is_finished());
    origin.open_gate("g");

    let reply = in_flight.await.expect("client");
    assert_eq!(reply.body(), &origin::body(3000));
    wait_for_line(&mut lines, "all connections drained").await;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

/// The proxy binary in front of `origin` with `shutdown_grace`, its log as lines, and the
/// address it listens on (keep the config file alive as long as the process).
async fn start_binary(
    origin: &Origin,
    grace: &str,
) -> (
    TempFile,
    std::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
    std::net::SocketAddr,
) {
    let file = write_config(&config_text(&origin.url(), "", "").replace(
        "shutdown_grace = \"2s\"",
        &format!("shutdown_grace = \"{grace}\""),
    ));
    let (child, mut lines) = spawn_with_log(
        Command::new(BINARY)
            .arg("--config")
            .arg(&file.0)
            .env("RUST_LOG", "info"),
    );
    let addr = listen_address(&mut lines).await;
    (file, child, lines, addr)
}

/// Reads log lines until one contains `text`, and returns it.
async fn wait_for_line(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    text: &str,
) -> String {
    loop {
        let line = tokio::time::timeout(PATIENCE, lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no log line with {text:?} in time"))
            .unwrap_or_else(|| panic!("the log ended without {text:?}"));
        if line.contains(text) {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_longer_than_shutdown_grace_is_cut_off_with_a_warning() {
    let origin = Origin::start(OriginSettings::default())
        .await
        .expect("origin");
    let (_file, mut child, mut lines, addr) = start_binary(&origin, "200ms").await;
    // This response never comes: the gate is never opened.
    let stuck = tokio::spawn(async move {
        let mut sender = connect(addr).await;
        let request = request(
            http::Method::GET,
            "/stuck?hold_head=never",
            &[],
            Default::default(),
        );
        sender.send_request(request).await.map(|r| r.status())
    });
    assert!(origin.wait_until(PATIENCE, |o| o.hits() == 1).await);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    wait_for_line(&mut lines, "shutdown grace period ran out").await;
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .expect("wait");
    assert!(status.code().is_some(), "exited rather than killed");
    assert!(stuck.await.expect("client").is_err(), "the cut connection");
}
