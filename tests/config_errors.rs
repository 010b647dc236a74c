//! Every kind of bad configuration gets one clear message naming its line and column, and
//! exit code 2, before anything is bound.

use std::process::Command;

use crate::command_line::{write_config, BINARY};

const UPSTREAM: &str = "[upstreams.app]\nurl = \"http://127.0.0.1:3000\"\n";
const ROUTE: &str = "[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n";

/// (config text, "line L, column C", a phrase the message must contain)
fn cases() -> Vec<(String, &'static str, &'static str)> {
    let ok = format!("{UPSTREAM}{ROUTE}");
    vec![
        (format!("{ok}bogus = 1\n"), "line 6, column 1", "unknown field `bogus`"),
        (format!("[server]\nlisen = \"127.0.0.1:1\"\n{ok}"), "line 2, column 1", "unknown field `lisen`"),
        (format!("[server]\nlisten = \"localhost\"\n{ok}"), "line 2, column 10", "invalid listen address"),
        (format!("[server]\nlisten = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n{ok}"), "line 2, column 10", "duplicate listen address"),
        (format!("[server]\nlisten = 8080\n{ok}"), "line 2, column 10", "did not match"),
        (format!("[server]\nshutdown_grace = \"soon\"\n{ok}"), "line 2, column 18", "invalid duration"),
        (format!("[server]\nsend_timeout = \"-1s\"\n{ok}"), "line 2, column 16", "invalid duration"),
        (format!("[server]\nheader_read_timeout = \"0s\"\n{ok}"), "line 2, column 23", "more than \"0s\""),
        // humantime's own example is enough: one, not two.
        (format!("[server]\nheader_read_timeout = \"10\"\n{ok}"), "line 2, column 23", "invalid duration \"10\": time unit needed, for example 10sec or 10ms\n"),
        (format!("[server]\nworkers = 0\n{ok}"), "line 2, column 11", "workers must be at least 1 (leave it out for one per core)"),
        (format!("[server]\nmax_buffered_bytes = \"lots\"\n{ok}"), "line 2, column 22", "invalid size \"lots\": a number and a unit (write e.g. \"8MiB\" or \"64KiB\")\n"),
        (format!("[admin]\nlisten = \"nowhere\"\n{ok}"), "line 2, column 10", "invalid admin listen address"),
        (format!("[server]\nlisten = \"127.0.0.1:9000\"\n[admin]\nlisten = \"127.0.0.1:9000\"\n{ok}"), "line 4, column 10", "also a [server] listen address"),
        (format!("[log]\nformat = \"xml\"\n{ok}"), "line 2, column 10", "unknown log format"),
        (format!("[log]\nlevel = \"loud=[\"\n{ok}"), "line 2, column 9", "invalid log level"),
        (format!("[log]\nlevel = \"warning\"\n{ok}"), "line 2, column 9", "\"warning\" is not a level"),
        (format!("[log]\nlevel = \"verbose\"\n{ok}"), "line 2, column 9", "\"verbose\" is not a level"),
        (format!("[log]\nlevel = \"\"\n{ok}"), "line 2, column 9", "invalid log level \"\": it is empty"),
        (format!("[log]\nlevel = \"info,coalesce_proxy=loud\"\n{ok}"), "line 2, column 9", "\"loud\" is not a level"),
        (format!("[log]\nstats_interval = 10\n{ok}"), "line 2, column 18", "expected a duration such as \"30s\""),
        (format!("[server]\nshutdown_grace = 30\n{ok}"), "line 2, column 18", "invalid type: integer `30`, expected a duration such as \"30s\""),
        ("[upstreams.app]\nurl = \"ftp://x\"\n".to_string() + ROUTE, "line 2, column 7", "not supported"),
        ("[upstreams.app]\nurl = \"127.0.0.1:3000\"\n".to_string() + ROUTE, "line 2, column 7", "invalid url"),
        ("[upstreams.app]\nurl = \"http://x/?q=1\"\n".to_string() + ROUTE, "line 2, column 7", "query string"),
        ("[upstreams.app]\n".to_string() + ROUTE, "line 1, column 1", "needs `url` or a non-empty `urls`"),
        (format!("{UPSTREAM}{ROUTE}fleet = {{ redis = \"http://cache:6379\" }}\n"), "line 6, column 19", "must be a redis:// URL"),
        (format!("{UPSTREAM}{ROUTE}fleet = {{ redis = \"redis://cache:6379\", lease = \"0s\" }}\n"), "line 6, column 49", "fleet.lease must be more than 0"),
        (format!("{UPSTREAM}{ROUTE}fleet = {{ redis = \"redis://cache:6379\", leese = \"1s\" }}\n"), "line 6, column 41", "unknown field `leese`"),
        (format!("{ROUTE}[upstreams.app]\nurls = []\n"), "line 4, column 1", "needs `url` or a non-empty `urls`"),
        (format!("[upstreams.app]\nurls = [\"http://a:1\"]\nbalance = \"random\"\n{ROUTE}"), "line 3, column 11", "unknown balance"),
        (format!("[upstreams.app]\nurls = [\"http://a:1/x\", \"http://b:1/y\"]\n{ROUTE}"), "line 2, column 25", "the same path"),
        (format!("[upstreams.app]\nurls = [\"http://a:1\", \"https://b:1\"]\n{ROUTE}"), "line 2, column 23", "the same scheme"),
        (format!("{UPSTREAM}tls = {{ verify = false }}\n{ROUTE}"), "line 3, column 7", "need https:// addresses"),
        (format!("[upstreams.app]\nurl = \"https://a:1\"\ntls = {{ ca_file = \"/nonexistent/ca.pem\" }}\n{ROUTE}"), "line 3, column 19", "tls ca_file /nonexistent/ca.pem"),
        (format!("[upstreams.app]\nurl = \"https://a:1\"\ntls = {{ ca_file = \"/dev/null\" }}\n{ROUTE}"), "line 3, column 19", "no certificates"),
        (format!("[upstreams.app]\nurl = \"https://a:1\"\ntls = {{ server_name = \"bad name!\" }}\n{ROUTE}"), "line 3, column 23", "invalid tls server_name"),
        (format!("[upstreams.app]\nurl = \"https://a:1\"\ntls = {{ ciphers = \"all\" }}\n{ROUTE}"), "line 3, column 9", "unknown field `ciphers`"),
        (format!("{ok}[resolver]\nnameservers = [\"dns.local\"]\n"), "line 7, column 15", "invalid [resolver] nameserver \"dns.local\""),
        (format!("{UPSTREAM}resolve_interval = \"often\"\n{ROUTE}"), "line 3, column 20", "invalid duration"),
        (format!("[server]\ntls = {{ cert_file = \"/nonexistent/c.pem\", key_file = \"/nonexistent/k.pem\" }}\n{ok}"), "line 2, column 21", "[server] tls /nonexistent/c.pem"),
        (format!("{UPSTREAM}connect_timeout = \"fast\"\n{ROUTE}"), "line 3, column 19", "invalid duration"),
        (format!("{UPSTREAM}pool_max_idle = -1\n{ROUTE}"), "line 3, column 17", "invalid value"),
        (format!("{UPSTREAM}concurrency = {{ max = 0 }}\n{ROUTE}"), "line 3, column 23", "at least 1"),
        (format!("{UPSTREAM}concurrency = {{ max = 8, queue_timeout = \"0s\" }}\n{ROUTE}"), "line 3, column 42", "queue_timeout must be more than 0s"),
        (format!("{UPSTREAM}[[routes]]\npath_prefix = \"/\"\nupstream = \"nope\"\n"), "line 5, column 12", "unknown upstream \"nope\""),
        (format!("{UPSTREAM}[[routes]]\npath_prefix = \"api\"\nupstream = \"app\"\n"), "line 4, column 15", "must start with \"/\""),
        (format!("{UPSTREAM}[[routes]]\nupstream = \"app\"\n"), "line 3, column 1", "missing field `path_prefix`"),
        (format!("{UPSTREAM}[[routes]]\nname = \"x\"\npath_prefix = \"/\"\nupstream = \"app\"\n[[routes]]\nname = \"x\"\npath_prefix = \"/a/\"\nupstream = \"app\"\n"), "line 8, column 8", "duplicate route name"),
        (format!("{UPSTREAM}[[routes]]\nhost = \"a b\"\npath_prefix = \"/\"\nupstream = \"app\"\n"), "line 4, column 8", "invalid host"),
        (format!("{ok}[coalesce]\nmethods = [\"G ET\"]\n"), "line 7, column 12", "invalid method"),
        (format!("{ok}[coalesce]\nkey_headers = [\"bad header\"]\n"), "line 7, column 16", "invalid header name"),
        (format!("{ok}[coalesce]\ncredentials = \"share\"\n"), "line 7, column 15", "unknown credentials policy"),
        (format!("{ok}[coalesce]\nnot_shareable = [\"cache-control:\"]\n"), "line 7, column 18", "needs one token"),
        (format!("{ok}[coalesce]\nmax_replay_body = \"lots\"\n"), "line 7, column 19", "invalid size"),
        (format!("{ok}[coalesce]\nbody_max = \"big\"\n"), "line 7, column 12", "invalid size"),
        (format!("{ok}[coalesce]\nmax_replay_body = \"64MiB\"\n"), "line 7, column 19", "must be at least max_replay_body"),
        (format!("{UPSTREAM}[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\ncoalesce = {{ enabeld = true }}\n"), "line 6, column 14", "unknown field `enabeld`"),
        (format!("{UPSTREAM}[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\ncache = {{ enabled = true, heuristic_fraction = 1.5 }}\n"), "line 6, column 48", "between 0 and 1"),
        (format!("{UPSTREAM}[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\ncache = {{ enabled = true, targeted_field = \"a b\" }}\n"), "line 6, column 44", "not a header name"),
        (format!("{UPSTREAM}[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\ncache = {{ enabled = true, status_name = \"my cache\" }}\n"), "line 6, column 41", "must be a token"),
        ("[server]\nlisten = \"127.0.0.1:1\"\n".to_string(), "line 3, column 1", "no [[routes]]"),
        ("[server\nlisten = 1\n".to_string(), "line 1, column 8", "expected"),
    ]
}

#[test]
fn bad_configs_get_one_clear_message_with_position_and_exit_2() {
    let cases = cases();
    assert!(cases.len() >= 20);
    for (text, position, phrase) in cases {
        assert!(position.starts_with("line "), "every case names a position");
        let file = write_config(&text);
        let output = Command::new(BINARY)
            .arg("--config")
            .arg(&file.0)
            .arg("--check")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text}\n{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&file.0.display().to_string()),
            "names the file: {stderr}"
        );
        assert!(
            stderr.contains(position),
            "{text}\nwant {position:?}: {stderr}"
        );
        assert!(stderr.contains(phrase), "{text}\nwant {phrase:?}: {stderr}");
    }
}

/// Every file in `config/` is a configuration that checks: anyone may check them all.
#[test]
fn every_file_in_config_checks() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).expect("config/") {
        let path = entry.expect("entry").path();
        let output = Command::new(BINARY)
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{}: {stderr}", path.display());
        checked += 1;
    }
    assert!(checked >= 2);
}

/// `healthcheck` without a target names both it could take.
#[test]
fn healthcheck_without_a_target_names_url_and_config() {
    let output = Command::new(BINARY)
        .arg("healthcheck")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--url <URL>|--config <PATH>"), "{stderr}");
}
