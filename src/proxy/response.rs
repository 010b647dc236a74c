//! Phase 6, response: what every upstream response head goes through before anyone sees it
//! (hop-by-hop fields removed, `Via` added), and the verdict on who may share it, under the
//! route's coalescing policy read through its targeted cache fields (RFC 9213). The one place
//! each of these happens, for flights, refreshes, pass-throughs and tunnels alike.

use http::{HeaderMap, Response, Version};

use super::hygiene;
use crate::cache;
use crate::route::Route;
use crate::sharing::{self, Sharing};

/// The upstream response head cleaned for clients; `Via` names the version the upstream
/// answered with (RFC 9110 §7.6.3).
pub(super) fn clean<B>(mut response: Response<B>) -> Response<B> {
    let version = response.version();
    clean_head(response.headers_mut(), version);
    response
}

pub(super) fn clean_head(headers: &mut HeaderMap, version: Version) {
    hygiene::clean_response_headers(headers, version);
}

/// Who may be given `response` (already cleaned) on `route`.
pub(super) fn judge<B>(route: &Route, response: &Response<B>) -> Sharing {
    let targeted = cache::as_targeted(route.cache_policy(), response.headers());
    sharing::judge_response(&route.coalesce, response.status(), &targeted)
}
