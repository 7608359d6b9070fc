//! Outlier detection (DestinationRule `trafficPolicy.outlierDetection`): passive health checking
//! by consecutive errors, as Istio programs Envoy.
//!
//! # Semantics (Envoy, as configured by Istio)
//!
//! * Every request outcome is reported per endpoint. Local failures are folded into HTTP codes
//!   (Istio leaves `split_external_local_origin_errors` false): connect failure and reset count
//!   as 503, timeout as 504. So they count as 5xx *and* as gateway errors.
//! * A 5xx increments the consecutive-5xx counter; a 502/503/504 also increments the
//!   consecutive-gateway counter, any other 5xx resets it; a non-5xx resets both.
//! * `consecutive5xxErrors` unset = 5 (Envoy's default); 0 disables. `consecutiveGatewayErrors`
//!   unset or 0 = disabled (Envoy's `enforcing_consecutive_gateway_failure` defaults to 0 and
//!   Istio sets it to 100 only for a positive value).
//! * When a counter reaches its threshold the endpoint is ejected at once, unless it is already
//!   ejected, and the counter is reset. Ejection is refused (counted as `ejections_overflow`)
//!   when `(ejected + 1) * 100 / endpoints > maxEjectionPercent`: current Envoy does **not**
//!   eject "at least one host" unless `always_eject_one_host` is set, which Istio does not set.
//!   With Istio's default of 10 %, a cluster of fewer than 10 endpoints therefore never ejects.
//!   `maxEjectionPercent` unset or 0 = 10 (Istio only forwards positive values).
//! * The ejection lasts `min(baseEjectionTime × backoff, max(300 s, baseEjectionTime))`, where
//!   `backoff` grows by one per ejection and shrinks by one per `interval` the endpoint stays
//!   in service (Envoy's `max_ejection_time` default and decay).
//! * `minHealthPercent` (default 0 = off) is Envoy's healthy panic threshold: while fewer than
//!   that share of endpoints are in service, ejections are ignored for load balancing.
//!
//! # Time
//!
//! Decisions take `now` as an argument; nothing here reads a clock. Envoy returns endpoints to
//! service at `interval` sweeps, so an ejection really lasts until the first sweep after it
//! expires; here an endpoint is returned exactly when its ejection expires, evaluated lazily on
//! the next pick, report or status read (never later than Envoy, at most one `interval`
//! earlier). The backoff decay is computed from the time of return the same way.

use std::time::{Duration, Instant};

use crate::config::istio::OutlierDetection;

/// Envoy's default `consecutive_5xx`.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Istio's (and Envoy's) default sweep interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
/// Istio's (and Envoy's) default base ejection time.
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Envoy's default `max_ejection_time` (raised to the base ejection time when that is longer).
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);
/// Envoy's default `max_ejection_percent`.
pub const DEFAULT_MAX_EJECTION_PERCENT: u8 = 10;

/// Outlier detection settings with Istio/Envoy defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive 5xx (incl. local failures) that eject; 0 = off.
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 (incl. local failures) that eject; 0 = off.
    pub consecutive_gateway_errors: u32,
    /// Sweep interval (backoff decay period).
    pub interval: Duration,
    /// Base ejection time.
    pub base_ejection_time: Duration,
    /// Cap of one ejection.
    pub max_ejection_time: Duration,
    /// Highest share of endpoints that may be ejected at once, 0..=100.
    pub max_ejection_percent: u8,
    /// Healthy panic threshold, 0..=100 (0 = never panic).
    pub min_health_percent: u8,
}

impl OutlierConfig {
    /// Applies the defaults to a DestinationRule's `outlierDetection`.
    pub fn from_istio(config: &OutlierDetection) -> Self {
        let base_ejection_time = config
            .base_ejection_time
            .map_or(DEFAULT_BASE_EJECTION_TIME, |d| d.0);
        Self {
            consecutive_5xx: config
                .consecutive_5xx_errors
                .unwrap_or(DEFAULT_CONSECUTIVE_5XX),
            consecutive_gateway_errors: config.consecutive_gateway_errors.unwrap_or(0),
            interval: config.interval.map_or(DEFAULT_INTERVAL, |d| d.0),
            base_ejection_time,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME.max(base_ejection_time),
            max_ejection_percent: config
                .max_ejection_percent
                .map(|p| p.0.min(100))
                .filter(|p| *p > 0)
                .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
            min_health_percent: config.min_health_percent.map_or(0, |p| p.0.min(100)),
        }
    }

    /// Whether `ejected` of `total` endpoints is below the healthy panic threshold.
    pub fn panics(&self, ejected: usize, total: usize) -> bool {
        let healthy = total.saturating_sub(ejected);
        healthy * 100 < usize::from(self.min_health_percent) * total
    }

    /// Whether one more endpoint may be ejected when `ejected` of `total` already are.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        total > 0 && (ejected + 1) * 100 <= usize::from(self.max_ejection_percent) * total
    }
}

/// What ended a request, as far as outlier detection is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Status(u16),
    /// The connection (HBONE tunnel) to the endpoint could not be established.
    ConnectFailure,
    /// The stream was reset by the endpoint or the connection broke mid-request.
    Reset,
    /// The (per-try) timeout expired.
    Timeout,
}

impl Outcome {
    /// The HTTP status Envoy folds this outcome into (local failures: 503, timeout: 504).
    pub fn status(self) -> u16 {
        match self {
            Self::Status(status) => status,
            Self::ConnectFailure | Self::Reset => 503,
            Self::Timeout => 504,
        }
    }
}

/// Which detector fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detector {
    Consecutive5xx,
    ConsecutiveGateway,
}

/// Per-endpoint outlier state. Invariant: `ejected_at.is_some()` iff the endpoint is ejected;
/// `last_returned` is only set while it is not.
#[derive(Debug, Clone, Default)]
pub(crate) struct EndpointOutlier {
    pub(crate) consecutive_5xx: u32,
    pub(crate) consecutive_gateway: u32,
    pub(crate) ejected_at: Option<Instant>,
    /// Ejection length multiplier (Envoy's `ejectTimeBackoff`), as of `last_returned`.
    backoff: u32,
    /// When the endpoint last returned to service.
    last_returned: Option<Instant>,
    /// Times ejected, ever.
    pub(crate) ejections: u32,
}

impl EndpointOutlier {
    /// Whether the endpoint is ejected (as of the last [`refresh`](Self::refresh)).
    pub(crate) fn is_ejected(&self) -> bool {
        self.ejected_at.is_some()
    }

    /// When the current ejection ends.
    pub(crate) fn ejected_until(&self, config: &OutlierConfig) -> Option<Instant> {
        self.ejected_at
            .map(|at| at + ejection_length(config, self.backoff))
    }

    /// Returns the endpoint to service if its ejection has expired by `now`; `true` if it did.
    pub(crate) fn refresh(&mut self, config: &OutlierConfig, now: Instant) -> bool {
        match self.ejected_until(config) {
            Some(until) if until <= now => {
                self.ejected_at = None;
                self.last_returned = Some(until);
                // Fresh counters, so a couple of errors right after return do not re-eject.
                self.consecutive_5xx = 0;
                self.consecutive_gateway = 0;
                true
            }
            _ => false,
        }
    }

    /// Counts one outcome; returns the detector that reached its threshold, if any.
    pub(crate) fn record(&mut self, config: &OutlierConfig, outcome: Outcome) -> Option<Detector> {
        let status = outcome.status();
        if !(500..600).contains(&status) {
            self.consecutive_5xx = 0;
            self.consecutive_gateway = 0;
            return None;
        }
        let mut fired = None;
        if matches!(status, 502..=504) {
            self.consecutive_gateway = self.consecutive_gateway.saturating_add(1);
            if config.consecutive_gateway_errors > 0
                && self.consecutive_gateway == config.consecutive_gateway_errors
            {
                fired = Some(Detector::ConsecutiveGateway);
            }
        } else {
            self.consecutive_gateway = 0;
        }
        self.consecutive_5xx = self.consecutive_5xx.saturating_add(1);
        if config.consecutive_5xx > 0 && self.consecutive_5xx == config.consecutive_5xx {
            // The 5xx detector wins when both fire; either way the endpoint is ejected once.
            fired = Some(Detector::Consecutive5xx);
        }
        fired
    }

    /// Resets the counter of the detector that fired (Envoy does so after the ejection
    /// attempt, whether or not it was allowed).
    pub(crate) fn reset_counter(&mut self, detector: Detector) {
        match detector {
            Detector::Consecutive5xx => self.consecutive_5xx = 0,
            Detector::ConsecutiveGateway => self.consecutive_gateway = 0,
        }
    }

    /// Ejects the endpoint at `now`.
    pub(crate) fn eject(&mut self, config: &OutlierConfig, now: Instant) {
        let mut backoff = self.effective_backoff(config, now);
        // Envoy stops growing the multiplier once the ejection is capped anyway.
        if duration_times(config.base_ejection_time, backoff)
            < config.max_ejection_time + config.base_ejection_time
        {
            backoff = backoff.saturating_add(1);
        }
        self.backoff = backoff;
        self.ejected_at = Some(now);
        self.last_returned = None;
        self.ejections = self.ejections.saturating_add(1);
    }

    /// The multiplier at `now`: one less per whole `interval` spent in service since the
    /// last return.
    pub(crate) fn effective_backoff(&self, config: &OutlierConfig, now: Instant) -> u32 {
        let Some(returned) = self.last_returned else {
            return self.backoff;
        };
        let interval = config.interval.as_nanos().max(1);
        let elapsed = now.saturating_duration_since(returned).as_nanos();
        let decay = u32::try_from(elapsed / interval).unwrap_or(u32::MAX);
        self.backoff.saturating_sub(decay)
    }
}

fn ejection_length(config: &OutlierConfig, backoff: u32) -> Duration {
    duration_times(config.base_ejection_time, backoff).min(config.max_ejection_time)
}

fn duration_times(duration: Duration, factor: u32) -> Duration {
    duration.checked_mul(factor).unwrap_or(Duration::MAX)
}
