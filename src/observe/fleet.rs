//! What the fleet layer (`fleet/`) reports: one word per event, in the stats line and in the
//! `fleet_events` metric alike.

/// Something the fleet layer did for one local flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetEvent {
    /// Took the key's lease in Redis: this proxy fetches for the fleet.
    Won,
    /// Found the lease taken and waited for its holder's result.
    Waited,
    /// Served a result another proxy fetched (a waiter's answer).
    Served,
    /// Served a fresh response from Redis on a local cache miss (the shared cache).
    CacheHit,
    /// Waited, then went upstream: the holder's response was not shareable, too large or an
    /// unshared error, or its result did not belong to this request.
    Released,
    /// The holder's lease ran out without a result, and this proxy took it over.
    TakenOver,
    /// Redis failed or was down: the flight went upstream as if the route had no fleet.
    Fallback,
    /// A result in Redis was refused: another key's, private, unreadable, or its `Vary`
    /// values are not this request's.
    Refused,
}

impl FleetEvent {
    pub const ALL: [FleetEvent; 8] = [
        FleetEvent::Won,
        FleetEvent::Waited,
        FleetEvent::Served,
        FleetEvent::CacheHit,
        FleetEvent::Released,
        FleetEvent::TakenOver,
        FleetEvent::Fallback,
        FleetEvent::Refused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FleetEvent::Won => "won",
            FleetEvent::Waited => "waited",
            FleetEvent::Served => "served",
            FleetEvent::CacheHit => "cache_hit",
            FleetEvent::Released => "released",
            FleetEvent::TakenOver => "taken_over",
            FleetEvent::Fallback => "fallback",
            FleetEvent::Refused => "refused",
        }
    }
}
