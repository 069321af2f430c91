//! What SIGHUP may change while connections stay: token keys, the API key, the anonymous
//! patterns, the abuse limits and the allowed origins (`ServerHandle::reload`).
//!
//! Workers read the policy on every command, so it is not behind a lock they take: each keeps
//! its own `Arc<Policy>` and compares one generation number per turn (a load of a line that is
//! written once per reload), taking the new `Arc` under a mutex only when it moved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::auth::{Auth, Patterns};
use crate::config::{Config, EffectiveLimits};

/// Access control and limits in force.
#[derive(Debug)]
pub(crate) struct Policy {
    /// Token verification and anonymous permissions; `None` when access control is off.
    pub(crate) auth: Option<Auth>,
    /// The abuse limits.
    pub(crate) limits: EffectiveLimits,
    /// Browser origins allowed (empty: any).
    pub(crate) allowed_origins: Vec<String>,
    /// What clients without a token may subscribe and publish to by the flags alone (`auth`'s
    /// anonymous permissions also take the namespaces that allow them): a channel whose
    /// namespace leaves it unset goes by these.
    pub(crate) anonymous_flags: (Patterns, Patterns),
}

impl Policy {
    /// The policy `config` asks for, with the running server's `namespaces` (which a reload
    /// does not change).
    pub(crate) fn from_config(
        config: &Config,
        namespaces: &[crate::namespace::Namespace],
    ) -> Result<Policy, crate::auth::AuthConfigError> {
        let mut auth = config.auth.clone();
        let anonymous_flags = (
            Patterns::parse(auth.anonymous_subscribe.iter().map(String::as_str))?,
            Patterns::parse(auth.anonymous_publish.iter().map(String::as_str))?,
        );
        // A namespace open to clients without a token makes the anonymous permissions exist
        // (so that such clients are not asked to authenticate first) and cover it; where a
        // namespace decides, the worker asks it (`access::anonymous_by_namespace`).
        for namespace in namespaces {
            if namespace.anonymous_subscribe == Some(true) {
                auth.anonymous_subscribe.push(namespace.pattern.clone());
            }
            if namespace.anonymous_publish == Some(true) {
                auth.anonymous_publish.push(namespace.pattern.clone());
            }
        }
        let auth = if config.auth.enabled() { Auth::new(&auth)? } else { None };
        Ok(Policy {
            limits: config.limits.effective(auth.is_some()),
            auth,
            allowed_origins: config.allowed_origins.clone(),
            anonymous_flags,
        })
    }
}

/// The current policy, swapped whole.
#[derive(Debug)]
pub(crate) struct CurrentPolicy {
    generation: AtomicU64,
    current: Mutex<Arc<Policy>>,
}

impl CurrentPolicy {
    pub(crate) fn new(policy: Policy) -> Self {
        CurrentPolicy { generation: AtomicU64::new(0), current: Mutex::new(Arc::new(policy)) }
    }

    /// The policy and its generation.
    pub(crate) fn get(&self) -> (Arc<Policy>, u64) {
        // Read under the lock so that the pair belongs together.
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        (current.clone(), self.generation.load(Ordering::Relaxed))
    }

    /// The generation, to compare with the one a worker holds (once per turn).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn replace(&self, policy: Policy) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(policy);
        self.generation.fetch_add(1, Ordering::Release);
    }
}
