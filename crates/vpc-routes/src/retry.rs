//! One deadline per operation, and jittered exponential backoff for throttled EC2 calls inside it.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::ec2::{ApiError, ApiErrorKind, Operation};
use crate::error::Error;

/// First backoff step; doubles per attempt up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest single wait: with thousands of nodes throttled together, longer waits only
/// lengthen ADD without lowering the request rate much more.
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Transport errors (nothing answered) are retried this often, not until the deadline:
/// an unreachable endpoint should turn into "try again later" quickly.
const TRANSPORT_ATTEMPTS: u32 = 3;

/// The point in time by which a whole operation (ensure, check, ...) must be done.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    /// `total` from now.
    pub fn after(total: Duration) -> Self {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }

    /// Time left; zero once passed.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub(crate) fn expired(&self, operation: Operation, last_error: Option<String>) -> Error {
        Error::Deadline {
            operation,
            seconds: self.total.as_secs(),
            last_error,
        }
    }
}

/// Backoff before retry number `attempt` (0-based): "equal jitter", half fixed and half
/// random, so nodes throttled at the same moment spread out but never retry at once.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    let half = ceiling / 2;
    let jitter_ms = random_u64() % (half.as_millis() as u64 + 1);
    half + Duration::from_millis(jitter_ms)
}

/// A random number from std's per-process random hash keys: enough to decorrelate nodes,
/// without a dependency on a random number crate.
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// Run one EC2 call until it succeeds, fails for good, or the deadline passes. Throttling is
/// retried with backoff until the deadline; transport errors [`TRANSPORT_ATTEMPTS`] times; any
/// other error (quota included) is returned at once as [`Error::Api`] or
/// [`Error::RouteLimitExceeded`]-ready [`ApiError`] for the caller to classify.
pub(crate) async fn call<T, F, Fut>(
    deadline: &Deadline,
    operation: Operation,
    mut f: F,
) -> Result<Result<T, ApiError>, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ApiError>>,
{
    let mut attempt = 0u32;
    let mut transport_failures = 0u32;
    let mut last_error: Option<String> = None;
    loop {
        let remaining = deadline.remaining();
        if remaining.is_zero() {
            return Err(deadline.expired(operation, last_error));
        }
        let result = match tokio::time::timeout(remaining, f()).await {
            Ok(result) => result,
            Err(_) => {
                return Err(deadline.expired(
                    operation,
                    last_error.or(Some("no answer from EC2".to_string())),
                ))
            }
        };
        let err = match result {
            Ok(v) => return Ok(Ok(v)),
            Err(e) => e,
        };
        match err.kind {
            ApiErrorKind::Throttled => {}
            ApiErrorKind::Transport => {
                transport_failures += 1;
                if transport_failures >= TRANSPORT_ATTEMPTS {
                    return Err(Error::Unavailable { source: err });
                }
            }
            ApiErrorKind::RouteLimitExceeded | ApiErrorKind::Service => return Ok(Err(err)),
        }
        let wait = backoff(attempt);
        attempt += 1;
        log::debug!("{err}; retry {attempt} in {wait:?}");
        if wait >= deadline.remaining() {
            return Err(match err.kind {
                ApiErrorKind::Transport => Error::Unavailable { source: err },
                _ => deadline.expired(operation, Some(err.to_string())),
            });
        }
        last_error = Some(err.to_string());
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        for attempt in 0..20 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_CAP);
            let b = backoff(attempt);
            assert!(b >= ceiling / 2 && b <= ceiling, "{attempt}: {b:?}");
        }
        let samples: std::collections::HashSet<_> = (0..20).map(|_| backoff(4)).collect();
        assert!(samples.len() > 1, "no jitter: {samples:?}");
    }
}
