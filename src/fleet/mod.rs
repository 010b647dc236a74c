//! The fleet layer: one origin request per key across every proxy that shares a Redis.
//!
//! It sits between the local flight table and admission. Only a local flight's fetch asks
//! it, once per flight, so a herd of a thousand local clients is one question to Redis.
//! [`Fleet::enter`] gives the fetch its [`Turn`]:
//! - with the route's cache on, a fresh response another proxy stored (`cache_hit`);
//! - else the key's lease (`SET NX PX`): the holder fetches, records the response
//!   (`body.rs`) and ends the lease with it (`lease.rs`);
//! - or, when another proxy holds the lease, its verdict: the response, served from here to
//!   the local flight's clients (`served`), or a release (`released`: fetch alone, now);
//! - a lease that runs out without a verdict (its holder died) is taken over by one waiter;
//! - Redis down, slow or odd: fetch as if the route had no fleet (`fallback`).
//!
//! What crosses processes follows the local rules: the key is the local flight's key (host,
//! key headers, Range and conditional headers, `TE`), only responses the local sharing rules
//! call shareable are written, and a waiter judges what it reads again (`Vary` values
//! against its own request, private or `Set-Cookie` responses refused), so a value written
//! by anyone else is never trusted more than the origin. Requests with credentials never
//! reach the fleet: their key holds the credentials, which must not leave the process.
//!
//! Files: `link` the connection and Redis's health, `lease` the holder's side, `entry` the
//! values in Redis, `body` the fetch's body (recorded, or from Redis).

mod body;
mod entry;
mod lease;
mod link;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{HeaderMap, Response, StatusCode};

pub use body::FetchBody;
pub use lease::Lease;

use self::entry::{Entry, SharedResponse, Verdict};
use self::lease::Asking;
use self::link::{Link, LinkError};
use crate::cache::{self, Freshness};
use crate::config::{CachePolicy, CoalescePolicy, FleetConfig};
use crate::observe::fleet::FleetEvent;
use crate::observe::stats::Stats;
use crate::sharing::{judge_response, vary_matches, Key};

/// A route's fleet layer.
pub struct Fleet {
    link: Arc<Link>,
    config: FleetConfig,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fleet({} {})", self.link.label, self.config.namespace)
    }
}

/// What a flight's fetch does next.
pub enum Turn {
    /// Serve this response, fetched (or stored) by another proxy.
    Shared(Response<FetchBody>),
    /// Fetch; the response goes to the fleet through the lease ([`Lease::record`]).
    Hold(Lease),
    /// Fetch as if the route had no fleet.
    Alone,
}

impl Turn {
    /// The lease this turn holds, if it is one.
    pub fn into_lease(self) -> Option<Lease> {
        match self {
            Turn::Hold(lease) => Some(lease),
            Turn::Shared(_) | Turn::Alone => None,
        }
    }
}

/// What the fleet needs to know of a flight.
pub struct Ask {
    /// The route's namespace and the request's key: the same in every proxy.
    fleet_key: Vec<u8>,
    /// The request's fields: its `Vary` values.
    headers: HeaderMap,
    coalesce: Arc<CoalescePolicy>,
    /// The route's cache policy: freshness in Redis, and whether to look there first.
    cache: Option<CachePolicy>,
    /// A plain miss (no stored response to revalidate, no part to complete) may be
    /// answered by a fresh response in Redis.
    look_in_cache: bool,
    /// How long a waiter waits for other proxies in all: the route's `max_wait`, else the
    /// upstream's `response_timeout`, plus one lease.
    longest_wait: Duration,
    body_max: u64,
}

/// The Redis names of one key.
pub(crate) struct Names {
    lease: String,
    result: String,
    channel: String,
}

/// How long a waiter keeps checking on a holder after its lease's time is up (the
/// holder's last renewal may be on its way).
const GRACE: Duration = Duration::from_millis(50);

impl Fleet {
    /// The fleet layer of a route; `redis_down` is the `fleet_redis_down` gauge it counts in.
    pub fn new(
        config: &FleetConfig,
        redis_down: prometheus_client::metrics::gauge::Gauge,
    ) -> Result<Fleet, redis::RedisError> {
        Ok(Fleet {
            link: Arc::new(Link::new(config, redis_down)?),
            config: config.clone(),
        })
    }

    /// Whether a request may use the fleet: not with credentials, whose values are in its
    /// key.
    pub fn may_carry(headers: &HeaderMap) -> bool {
        !headers.contains_key(header::AUTHORIZATION) && !headers.contains_key(header::COOKIE)
    }

    /// What the fleet needs of a flight for `key`, asked with `headers`.
    #[allow(clippy::too_many_arguments)]
    pub fn ask(
        &self,
        key: &Key,
        headers: &HeaderMap,
        coalesce: &Arc<CoalescePolicy>,
        cache: Option<&CachePolicy>,
        plain_miss: bool,
        response_timeout: Duration,
    ) -> Arc<Ask> {
        let namespace = self.config.namespace.as_bytes();
        let mut fleet_key = Vec::with_capacity(4 + namespace.len() + key.portable().len());
        fleet_key.extend_from_slice(&(namespace.len() as u32).to_le_bytes());
        fleet_key.extend_from_slice(namespace);
        fleet_key.extend_from_slice(key.portable());
        Arc::new(Ask {
            fleet_key,
            headers: headers.clone(),
            coalesce: coalesce.clone(),
            cache: cache.cloned(),
            look_in_cache: cache.is_some() && plain_miss,
            longest_wait: coalesce.max_wait.unwrap_or(response_timeout) + self.config.lease,
            body_max: self.config.body_max,
        })
    }

    /// The flight's turn: see the module's notes.
    pub async fn enter(self: Arc<Self>, ask: Arc<Ask>, stats: Arc<Stats>) -> Turn {
        if !self.link.usable() {
            stats.record_fleet(FleetEvent::Fallback);
            return Turn::Alone;
        }
        match self.turn(&ask, &stats).await {
            Ok(turn) => {
                self.link.answered();
                turn
            }
            Err(err) => {
                self.link.failed(&err);
                stats.record_fleet(FleetEvent::Fallback);
                Turn::Alone
            }
        }
    }

    async fn turn(&self, ask: &Arc<Ask>, stats: &Stats) -> Result<Turn, LinkError> {
        let names = Arc::new(Names::of(&self.config.namespace, &ask.fleet_key));
        if ask.look_in_cache {
            if let Some(value) = self.get(&names.result).await? {
                match Entry::decode(&value).map(|e| e.verdict) {
                    Some(Verdict::Response(stored)) => match ask.serve(*stored, true) {
                        Ok(response) => {
                            stats.record_fleet(FleetEvent::CacheHit);
                            return Ok(Turn::Shared(response));
                        }
                        Err(Unusable::Stale) => {}
                        Err(Unusable::Refused) => stats.record_fleet(FleetEvent::Refused),
                    },
                    Some(Verdict::Release) => {}
                    None => stats.record_fleet(FleetEvent::Refused),
                }
            }
        }
        let token = new_token();
        let deadline = Instant::now() + ask.longest_wait;
        let mut waited = false;
        loop {
            let mut asking = Asking {
                link: &self.link,
                names: &names,
                token: &token,
                answered: false,
            };
            let (won, holder, left) = self.try_lease(&names, &token).await?;
            asking.answered = true;
            drop(asking);
            if won {
                let event = if waited {
                    FleetEvent::TakenOver
                } else {
                    FleetEvent::Won
                };
                stats.record_fleet(event);
                let lease = self.config.lease;
                let lease = Lease::start(self.link.clone(), names, token, lease, ask.clone());
                return Ok(Turn::Hold(lease));
            }
            if !waited {
                stats.record_fleet(FleetEvent::Waited);
                waited = true;
            }
            let until = deadline.min(Instant::now() + left + GRACE);
            let verdict = match holder {
                Some(holder) => self.wait_for(&names, &holder, until).await?,
                // Given up between our SET and GET: ask again.
                None => None,
            };
            match verdict {
                Some(Verdict::Response(shared)) => {
                    return Ok(match ask.serve(*shared, false) {
                        Ok(response) => {
                            stats.record_fleet(FleetEvent::Served);
                            Turn::Shared(response)
                        }
                        Err(_) => {
                            stats.record_fleet(FleetEvent::Refused);
                            Turn::Alone
                        }
                    })
                }
                Some(Verdict::Release) => {
                    stats.record_fleet(FleetEvent::Released);
                    return Ok(Turn::Alone);
                }
                None if Instant::now() >= deadline => {
                    stats.record_fleet(FleetEvent::Released);
                    return Ok(Turn::Alone);
                }
                // The lease ran out: the holder died, or gave up. Try to take it.
                None => {}
            }
        }
    }

    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, LinkError> {
        let name = name.to_owned();
        self.link
            .run(|mut connection| async move {
                redis::cmd("GET")
                    .arg(name)
                    .query_async::<Option<Vec<u8>>>(&mut connection)
                    .await
            })
            .await
    }

    /// The key's result and its lease's holder, in one round trip.
    async fn result_and_lease(
        &self,
        names: &Names,
    ) -> Result<(Option<Vec<u8>>, Option<String>), LinkError> {
        let (result, lease) = (names.result.clone(), names.lease.clone());
        self.link
            .run(|mut connection| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(result)
                    .cmd("GET")
                    .arg(lease)
                    .query_async(&mut connection)
                    .await
            })
            .await
    }

    /// Tries to take the key's lease: whether it is ours now, whose it is, and for how much
    /// longer. One round trip (MULTI).
    async fn try_lease(
        &self,
        names: &Names,
        token: &str,
    ) -> Result<(bool, Option<String>, Duration), LinkError> {
        let (lease, token) = (names.lease.clone(), token.to_owned());
        let millis = self.config.lease.as_millis() as u64;
        let (set, holder, left): (Option<String>, Option<String>, i64) = self
            .link
            .run(|mut connection| async move {
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(&lease)
                    .arg(&token)
                    .arg("NX")
                    .arg("PX")
                    .arg(millis)
                    .cmd("GET")
                    .arg(&lease)
                    .cmd("PTTL")
                    .arg(&lease)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let left = Duration::from_millis(left.max(0) as u64);
        Ok((set.is_some(), holder, left))
    }

    /// Waits until `holder`'s verdict is in Redis (`Some`), or until the lease is no longer
    /// its (given up, run out) or `until` (`None`: try to take it).
    async fn wait_for(
        &self,
        names: &Names,
        holder: &str,
        until: Instant,
    ) -> Result<Option<Verdict>, LinkError> {
        let mut listener = self.link.listen(&names.channel).await?;
        loop {
            // Read after subscribing: a verdict written before is found here, one written
            // after is announced.
            let (result, lease) = self.result_and_lease(names).await?;
            if let Some(entry) = result.as_deref().and_then(Entry::decode) {
                if entry.token == holder.as_bytes() {
                    return Ok(Some(entry.verdict));
                }
            }
            if lease.as_deref() != Some(holder) {
                return Ok(None);
            }
            let until = tokio::time::Instant::from_std(until);
            match tokio::time::timeout_at(until, listener.next()).await {
                Ok(true) => {}
                Ok(false) => return Err(LinkError::Gone),
                Err(_) => return Ok(None),
            }
        }
    }
}

impl Ask {
    /// How long Redis keeps a response: its freshness when the route caches and may store
    /// it, so that another proxy's miss finds it; else just long enough for the waiters.
    fn keep(&self, status: StatusCode, headers: &HeaderMap) -> Duration {
        self.cache
            .as_ref()
            .and_then(|policy| cache::freshness(policy, status, headers, false))
            .filter(|f| !f.always_revalidate)
            .map_or(Duration::ZERO, |f| f.fresh_for)
    }

    /// `shared` as this request's response, or why it may not be: another key's, not
    /// shareable under this route's rules, varying on values this request does not have
    /// (refused), or, from the shared cache, not fresh now.
    fn serve(
        &self,
        shared: SharedResponse,
        as_cache: bool,
    ) -> Result<Response<FetchBody>, Unusable> {
        if shared.key != self.fleet_key {
            return Err(Unusable::Refused);
        }
        let mut headers = shared.headers;
        let age = cache::current_age(&headers, shared.received_at, SystemTime::now());
        if !age.is_zero() || headers.contains_key(header::AGE) {
            headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
        }
        let targeted = cache::as_targeted(self.cache.as_ref(), &headers);
        let sharing = judge_response(&self.coalesce, shared.status, &targeted);
        if !sharing.shareable() || !vary_matches(&sharing.vary, &self.headers, &shared.varied) {
            return Err(Unusable::Refused);
        }
        if as_cache {
            let fresh = self.cache.as_ref().is_some_and(|policy| {
                cache::freshness(policy, shared.status, &headers, false)
                    .is_some_and(|f: Freshness| !f.always_revalidate && !f.fresh_for.is_zero())
            });
            if !fresh {
                return Err(Unusable::Stale);
            }
        }
        let body = Some(shared.body).filter(|b| !b.is_empty());
        let mut response = Response::new(FetchBody::Shared(body, shared.trailers));
        *response.status_mut() = shared.status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// Why a response from Redis does not answer a request.
enum Unusable {
    /// Not this request's to have.
    Refused,
    /// From the shared cache, and no longer fresh.
    Stale,
}

impl Names {
    fn of(namespace: &str, fleet_key: &[u8]) -> Names {
        let digest = sha1_smol::Sha1::from(fleet_key).digest().to_string();
        let name = |kind: &str| format!("coalesce-proxy:{namespace}:{kind}:{digest}");
        Names {
            lease: name("lease"),
            result: name("result"),
            channel: name("done"),
        }
    }
}

/// A flight's lease token: random, so that no two flights anywhere hold the same one.
fn new_token() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        // No randomness: the time and a counter still tell this process's flights apart.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        bytes[..8].copy_from_slice(&(nanos ^ n.rotate_left(32)).to_le_bytes());
        bytes[8..].copy_from_slice(&(std::process::id()).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
