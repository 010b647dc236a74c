//! A request's outcome: the one word that names what happened to it, in the outcome header,
//! in log fields and in metric labels alike.

use http::HeaderValue;

/// What happened to a request. The same words appear in the outcome header, in logs and in
/// metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Started a flight.
    Leader = 0,
    /// Was served from someone else's flight.
    Follower,
    /// Went upstream on its own (not eligible to share), or got an answer from the proxy
    /// itself (no route).
    Pass,
    /// Served from the route's response cache (counted with `Stale` as `cache_hits` in the
    /// stats line).
    Hit,
    /// Served a stale cached response: while it is refreshed in the background, or because
    /// the upstream failed.
    Stale,
    /// The client went away (closed its connection, reset its stream: a gRPC deadline)
    /// before its response head was ready: logged with nginx's status 499.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Leader,
        Outcome::Follower,
        Outcome::Pass,
        Outcome::Hit,
        Outcome::Stale,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Leader => "leader",
            Outcome::Follower => "follower",
            Outcome::Pass => "pass",
            Outcome::Hit => "hit",
            Outcome::Stale => "stale",
            Outcome::Cancelled => "cancelled",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }
}
