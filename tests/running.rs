//! The proxy binary run as a process with JSON logs, for tests that need its signals, exit
//! status and log lines: [`Running`], and the configuration those tests start from.

use std::net::SocketAddr;
use std::process::Command;

use coalesce_proxy::tools::origin::Origin;

use crate::command_line::BINARY;
use crate::util::*;

/// The proxy binary, its stderr as lines, and the addresses it logged.
pub(crate) struct Running {
    pub(crate) child: std::process::Child,
    pub(crate) lines: tokio::sync::mpsc::UnboundedReceiver<String>,
    pub(crate) log: Vec<serde_json::Value>,
}

impl Running {
    pub(crate) fn start(config: &std::path::Path) -> Running {
        let (child, lines) = spawn_with_log(
            Command::new(BINARY)
                .arg("--config")
                .arg(config)
                .env_remove("RUST_LOG"),
        );
        Running {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Reads log lines (each must be JSON) until one has `message` starting with `prefix`.
    pub(crate) async fn wait_for(&mut self, prefix: &str) -> serde_json::Value {
        loop {
            let line = tokio::time::timeout(PATIENCE, self.lines.recv())
                .await
                .unwrap_or_else(|_| panic!("no log line starting {prefix:?}"))
                .expect("proxy alive");
            let value: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|err| panic!("log line is not JSON ({err}): {line}"));
            self.log.push(value.clone());
            if value["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(prefix))
            {
                return value;
            }
        }
    }

    pub(crate) fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(sent.success());
    }
}

pub(crate) fn address(value: &serde_json::Value) -> SocketAddr {
    value["address"]
        .as_str()
        .expect("address field")
        .parse()
        .expect("address")
}

pub(crate) fn reload_config(origin: &Origin, routes: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
[admin]
listen = "127.0.0.1:0"
[log]
format = "json"
access = true
stats_interval = "0s"
[upstreams.origin]
url = "{}"
{routes}
"#,
        origin.url()
    )
}

/// Reads log lines (JSON) until the process exits, and returns them.
pub(crate) async fn rest_of_log(proxy: &mut Running) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    while let Ok(Some(line)) = tokio::time::timeout(PATIENCE, proxy.lines.recv()).await {
        lines.push(serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line)));
    }
    lines
}

pub(crate) fn is_stats(line: &serde_json::Value) -> bool {
    line["message"] == "stats" || line["target"] == "coalesce_proxy::stats"
}
