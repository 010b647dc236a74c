//! A request's script: what its query parameters ask the origin to do.

use std::time::Duration;

/// What a request asked the origin to do.
#[derive(Debug, Default)]
pub(super) struct Script {
    pub(super) delay: Option<Duration>,
    /// Requests in progress the origin handles at full speed; past it every request's delay
    /// grows as (in progress / capacity)², as a saturated backend's does.
    pub(super) capacity: Option<u64>,
    pub(super) size: Option<usize>,
    pub(super) status: Option<u16>,
    pub(super) chunked: bool,
    pub(super) chunks: usize,
    pub(super) gap: Duration,
    pub(super) hold_head: Option<String>,
    pub(super) hold_rest: Option<String>,
    pub(super) hold: Option<String>,
    pub(super) fail: Option<String>,
    pub(super) headers: Vec<(String, String)>,
    pub(super) cookie: bool,
    pub(super) echo_header: Option<String>,
    pub(super) informational: bool,
    pub(super) trailers: bool,
    pub(super) body_anyway: bool,
    pub(super) fail_after: Option<u64>,
    pub(super) close_after: Option<u64>,
    /// A GET without `Range` is answered with a 206 of this many first bytes.
    pub(super) partial: Option<usize>,
}

impl Script {
    pub(super) fn parse(target: &str) -> Script {
        let mut script = Script {
            chunks: 1,
            ..Script::default()
        };
        let query = target.split_once('?').map_or("", |(_, q)| q);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let millis = || value.parse().ok().map(Duration::from_millis);
            match name {
                "delay" => script.delay = millis(),
                "capacity" => script.capacity = value.parse().ok().filter(|c| *c > 0),
                "size" => script.size = value.parse().ok(),
                "status" => script.status = value.parse().ok(),
                "chunked" => script.chunked = value == "1",
                "chunks" => script.chunks = value.parse().unwrap_or(1).max(1),
                "gap" => script.gap = millis().unwrap_or_default(),
                "hold" => script.hold = Some(value.to_owned()),
                "hold_head" => script.hold_head = Some(value.to_owned()),
                "hold_rest" => script.hold_rest = Some(value.to_owned()),
                "cookie" => script.cookie = value == "1",
                "informational" => script.informational = value == "1",
                "trailers" => script.trailers = value == "1",
                "body_anyway" => script.body_anyway = value == "1",
                "fail_after" => script.fail_after = value.parse().ok(),
                "close_after" => script.close_after = value.parse().ok(),
                "partial" => script.partial = value.parse().ok().filter(|n| *n > 0),
                "echo_header" => script.echo_header = Some(value.to_owned()),
                "fail" => script.fail = Some(value.to_owned()),
                "header" => {
                    if let Some((n, v)) = value.split_once(':') {
                        script.headers.push((n.to_owned(), v.replace("%20", " ")));
                    }
                }
                _ => {}
            }
        }
        script
    }

    pub(super) fn fails(&self, what: &str) -> bool {
        self.fail.as_deref() == Some(what)
    }
}

/// `bytes=A-B` or `bytes=A-` (a single range) as `(A, Some(B))` or `(A, None)`.
pub(super) fn parse_range(value: &str) -> Option<(usize, Option<usize>)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let first = first.trim().parse().ok()?;
    let last = match last.trim() {
        "" => None,
        last => Some(last.parse().ok()?),
    };
    Some((first, last))
}
