//! Who may connect, subscribe and publish.
//!
//! Clients carry a signed token (a JWT their backend minted): `sub` names the client (it owns the
//! inbox `@<sub>`), `exp` ends it, and `subscribe` / `publish` list the channel patterns it may
//! use (see `pattern`). A backend may instead present the API key, which may do everything.
//! Clients without a token get the anonymous patterns (`--anonymous-sub`, `--anonymous-pub`), or,
//! when there are none, nothing but AUTH and PING until they authenticate.
//!
//! Verification is `jsonwebtoken`'s, with its pure-Rust backend; what is ours is the choice of
//! key by the header's algorithm family (an HMAC secret is never tried on an RSA/EC/Ed25519 token
//! nor a public key used as an HMAC secret, so the HS/RS confusion cannot happen; `alg: none`
//! does not parse), and the claims, checked here rather than by the library so that RFC 7519's
//! NumericDate is read whole (a JSON number, decimals included, as PyJWT writes
//! `time.time() + ttl`): `exp` required, `nbf` honoured, `iat` well-formed, `aud`/`iss`
//! required and checked when configured, `sub` a client name, no leeway (the server's own grace
//! applies after `exp`).

pub mod pattern;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

pub use self::pattern::{Pattern, PatternError, Patterns};
use crate::protocol::validate_client_name;

/// Longest token accepted, in bytes (a JWT with a few hundred patterns is a few KiB).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Longest `info` claim accepted, as compact JSON: each presence answer and join event carries
/// it, so it is bounded like a frame field, not like a token.
pub const DEFAULT_MAX_INFO_BYTES: usize = 1024;

/// What a stranger's budget holds beside the longest token: the command around it (`AUTH `, a
/// RESP `HELLO 3 AUTH user … SETNAME name`, a WebSocket's JSON) and a PING.
const STRANGER_HEADROOM_BYTES: usize = 1024;

/// Access control as configured (`fanout serve --auth-...`). Empty: auth is off.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// HS256/384/512 secret.
    pub hmac_secret: Option<Vec<u8>>,
    /// RS*, PS*, ES256/384 and EdDSA public keys in PEM, each with an optional key id (`kid`).
    pub public_keys: Vec<(Option<String>, Vec<u8>)>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// A key that may do everything (backends).
    pub api_key: Option<Vec<u8>>,
    /// Patterns clients without a token may subscribe to.
    pub anonymous_subscribe: Vec<String>,
    /// Patterns clients without a token may publish to.
    pub anonymous_publish: Vec<String>,
    /// A connection that has no permissions must authenticate within this long.
    pub timeout: Duration,
    /// A connection whose token expired is closed this long after `exp`, unless it sent a fresh
    /// token meanwhile.
    pub expiry_grace: Duration,
    /// Longest token, in bytes.
    pub max_token_bytes: usize,
    /// Longest `info` claim, as compact JSON (0: `DEFAULT_MAX_INFO_BYTES`).
    pub max_info_bytes: usize,
}

impl AuthConfig {
    /// True when anything restricts access.
    pub fn enabled(&self) -> bool {
        self.hmac_secret.is_some()
            || !self.public_keys.is_empty()
            || self.api_key.is_some()
            || !self.anonymous_subscribe.is_empty()
            || !self.anonymous_publish.is_empty()
    }
}

/// What one connection may do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    /// The token's `sub`: the client's identity, and the only name it may claim.
    pub subject: Option<Box<str>>,
    /// Channels it may subscribe to.
    pub subscribe: Patterns,
    /// Channels it may publish to.
    pub publish: Patterns,
    /// The API key: everything is allowed, no rate limits.
    pub everything: bool,
    /// The token's `exp`, in Unix milliseconds.
    pub expires_unix_ms: Option<u64>,
    /// The token's `iat`, in Unix milliseconds (a revocation refuses tokens issued before it).
    pub issued_unix_ms: Option<u64>,
    /// The token's `info` claim, a JSON object as compact JSON: what presence shows of the
    /// member (at most `AuthConfig::max_info_bytes`).
    pub info: Option<Box<str>>,
    /// The token's `admin` claim is `true`: it may use the server API (`/api/`), as the API
    /// key does.
    pub admin: bool,
}

impl Grant {
    /// May subscribe to `channel` (resuming included).
    pub fn may_subscribe(&self, channel: &[u8]) -> bool {
        self.everything || self.subscribe.allow(channel)
    }

    /// May publish to `channel`.
    pub fn may_publish(&self, channel: &[u8]) -> bool {
        self.everything || self.publish.allow(channel)
    }

    /// May use the server API.
    pub fn may_administer(&self) -> bool {
        self.everything || self.admin
    }

    /// May claim the client name `name` (and with it the inbox `@name`).
    pub fn may_claim(&self, name: &[u8]) -> bool {
        self.everything || self.subject.as_deref().is_some_and(|s| s.as_bytes() == name)
    }
}

/// How an authentication ended, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted.
    Ok,
    /// Past `exp`.
    Expired,
    /// Before `nbf`, or the wrong `aud` or `iss`.
    InvalidClaims,
    /// The signature does not verify, the algorithm has no key here, or the key id is unknown.
    BadSignature,
    /// Not a JWT, too long, or claims of the wrong shape.
    Malformed,
}

impl Outcome {
    /// Every outcome, in metrics order.
    pub const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::Expired,
        Outcome::InvalidClaims,
        Outcome::BadSignature,
        Outcome::Malformed,
    ];

    /// Its label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Expired => "expired",
            Outcome::InvalidClaims => "invalid_claims",
            Outcome::BadSignature => "bad_signature",
            Outcome::Malformed => "malformed",
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Longer than `max_token_bytes`.
    #[error("token longer than {0} bytes")]
    TooLong(usize),
    /// Not a JWT (or `alg: none`, which is not an algorithm here).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Claims present but of the wrong shape.
    #[error("bad claim: {0}")]
    BadClaim(String),
    /// The signature did not verify, or nothing here can verify this algorithm or key id.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// Past `exp`.
    #[error("token expired")]
    Expired,
    /// Before `nbf`.
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` is not the configured audience.
    #[error("token for another audience")]
    WrongAudience,
    /// `iss` is not the configured issuer.
    #[error("token from another issuer")]
    WrongIssuer,
    /// The server API disconnected its user with `revoke`: tokens of that user issued before
    /// then are refused.
    #[error("token revoked: its user was disconnected by the server after it was issued")]
    Revoked,
}

impl AuthError {
    /// The metrics bucket.
    pub fn outcome(&self) -> Outcome {
        match self {
            AuthError::TooLong(_) | AuthError::Malformed(_) | AuthError::BadClaim(_) => {
                Outcome::Malformed
            }
            AuthError::BadSignature(_) => Outcome::BadSignature,
            AuthError::Expired => Outcome::Expired,
            AuthError::NotYetValid
            | AuthError::WrongAudience
            | AuthError::WrongIssuer
            | AuthError::Revoked => Outcome::InvalidClaims,
        }
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    /// A public key file is not a PEM key of a kind we verify with.
    #[error("public key {which}: not an RSA, EC (P-256/P-384) or Ed25519 public key in PEM")]
    PublicKey {
        /// Its key id, or its position.
        which: String,
    },
    /// An anonymous pattern does not parse.
    #[error("anonymous pattern: {0}")]
    Pattern(#[from] PatternError),
    /// An empty secret or API key would let anyone sign or in.
    #[error("{0} is empty")]
    Empty(&'static str),
}

/// The signature families; a token's `alg` picks one, and only keys of that family are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Ed,
}

/// Which key verifies an algorithm: the HMAC secret (`Ok(None)`), a public key of a family, or
/// none here (an algorithm this build does not know).
fn family_of(algorithm: Algorithm) -> Result<Option<Family>, AuthError> {
    Ok(match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => None,
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => Some(Family::Rsa),
        Algorithm::ES256 | Algorithm::ES384 => Some(Family::Ec),
        Algorithm::EdDSA => Some(Family::Ed),
        other => return Err(AuthError::BadSignature(format!("unsupported algorithm {other:?}"))),
    })
}

#[derive(Debug)]
struct PublicKey {
    kid: Option<String>,
    family: Family,
    key: DecodingKey,
}

/// Compares without an early exit, so that the time taken does not say how much of a guessed
/// key was right (the length may show; keys are long and random).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The verifier, built once at start from an `AuthConfig`.
#[derive(Debug)]
pub struct Auth {
    hmac: Option<DecodingKey>,
    public: Vec<PublicKey>,
    audience: Option<String>,
    issuer: Option<String>,
    api_key: Option<Vec<u8>>,
    anonymous: Option<Arc<Grant>>,
    everything: Arc<Grant>,
    max_token_bytes: usize,
    max_info_bytes: usize,
    /// A connection that has no permissions must authenticate within this long.
    pub timeout: Duration,
    /// How long after `exp` an unrefreshed connection is closed.
    pub expiry_grace: Duration,
}

impl Auth {
    /// Parses keys and patterns; `None` when auth is off.
    pub fn new(config: &AuthConfig) -> Result<Option<Auth>, AuthConfigError> {
        if !config.enabled() {
            return Ok(None);
        }
        // Only the pure-Rust backend is compiled in; say so rather than let it be inferred.
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        if config.hmac_secret.as_ref().is_some_and(Vec::is_empty) {
            return Err(AuthConfigError::Empty("the HMAC secret"));
        }
        if config.api_key.as_ref().is_some_and(Vec::is_empty) {
            return Err(AuthConfigError::Empty("the API key"));
        }
        let mut public = Vec::new();
        for (i, (kid, pem)) in config.public_keys.iter().enumerate() {
            let parsed = DecodingKey::from_ed_pem(pem)
                .map(|key| (Family::Ed, key))
                .or_else(|_| DecodingKey::from_ec_pem(pem).map(|key| (Family::Ec, key)))
                .or_else(|_| DecodingKey::from_rsa_pem(pem).map(|key| (Family::Rsa, key)));
            let which = kid.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let (family, key) = parsed.map_err(|_| AuthConfigError::PublicKey { which })?;
            public.push(PublicKey { kid: kid.clone(), family, key });
        }
        let anonymous_subscribe =
            Patterns::parse(config.anonymous_subscribe.iter().map(String::as_str))?;
        let anonymous_publish =
            Patterns::parse(config.anonymous_publish.iter().map(String::as_str))?;
        let anonymous =
            (!anonymous_subscribe.is_empty() || !anonymous_publish.is_empty()).then(|| {
                Arc::new(Grant {
                    subscribe: anonymous_subscribe,
                    publish: anonymous_publish,
                    ..Default::default()
                })
            });
        Ok(Some(Auth {
            hmac: config
                .hmac_secret
                .as_deref()
                .map(DecodingKey::from_secret)
                .transpose()
                .map_err(|_| AuthConfigError::Empty("the HMAC secret"))?,
            public,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            api_key: config.api_key.clone(),
            anonymous,
            everything: Arc::new(Grant { everything: true, ..Default::default() }),
            max_token_bytes: if config.max_token_bytes == 0 {
                DEFAULT_MAX_TOKEN_BYTES
            } else {
                config.max_token_bytes
            },
            max_info_bytes: match config.max_info_bytes {
                0 => DEFAULT_MAX_INFO_BYTES,
                n => n.min(u16::MAX as usize),
            },
            timeout: config.timeout,
            expiry_grace: config.expiry_grace,
        }))
    }

    /// True when `grant` is what this configuration's API key gives (connections that
    /// authenticated with the key hold this very grant).
    pub fn is_api_key_grant(&self, grant: &Arc<Grant>) -> bool {
        Arc::ptr_eq(grant, &self.everything)
    }

    /// True when both have the same API key (or neither has one).
    pub fn same_api_key(&self, other: &Auth) -> bool {
        match (&self.api_key, &other.api_key) {
            (Some(a), Some(b)) => constant_time_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }

    /// What a client without a token may do (`None`: nothing until it authenticates).
    pub fn anonymous(&self) -> Option<&Arc<Grant>> {
        self.anonymous.as_ref()
    }

    /// Most bytes a connection without permissions may send in one frame, command, message or
    /// request body: enough for AUTH with the longest token accepted, and a PING. Redis refuses
    /// an unauthenticated bulk over 16 KiB; NATS bounds its control line to 4 KiB before CONNECT.
    pub fn stranger_input_bytes(&self) -> usize {
        self.max_token_bytes + STRANGER_HEADROOM_BYTES
    }

    /// Whether connections without a token receive broadcasts (`*`): only when the anonymous
    /// grant names `*` (`--anonymous-sub '*'`). A connection with a token (or the API key)
    /// always does.
    pub fn anonymous_hears_broadcast(&self) -> bool {
        self.anonymous.as_ref().is_some_and(|grant| grant.may_subscribe(b"*"))
    }

    /// Verifies a token (or the API key) and returns what it grants.
    pub fn verify(&self, token: &[u8]) -> Result<Arc<Grant>, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLong(self.max_token_bytes));
        }
        if let Some(api_key) = &self.api_key {
            if constant_time_eq(token, api_key) {
                return Ok(self.everything.clone());
            }
        }
        let token = std::str::from_utf8(token)
            .map_err(|_| AuthError::Malformed("not UTF-8".into()))?
            .trim();
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Malformed(format!("header: {e}")))?;
        let key = self.key_for(header.alg, header.kid.as_deref())?;
        // The library checks the signature and the algorithm; the claims are `check_claims`'s.
        let mut validation = Validation::new(header.alg);
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, key, &validation).map_err(classify)?;
        let expires_unix_ms = self.check_claims(&data.claims, unix_now_ms())?;
        grant_of(&data.claims, expires_unix_ms, self.max_info_bytes)
    }

    /// The registered claims (RFC 7519 4.1) at Unix time `now_ms`: returns `exp` in Unix
    /// milliseconds. A NumericDate that is not a number, is negative, not finite, or past the
    /// year 9999 is a bad claim, not a date to compute with.
    fn check_claims(&self, claims: &serde_json::Value, now_ms: u64) -> Result<u64, AuthError> {
        let exp = numeric_date(claims, "exp", f64::floor)?
            .ok_or_else(|| AuthError::BadClaim("exp is required".into()))?;
        // "The current date/time MUST be before the expiration date/time" (4.1.4).
        if now_ms >= exp {
            return Err(AuthError::Expired);
        }
        // "MUST NOT be accepted for processing" before `nbf` (4.1.5).
        if numeric_date(claims, "nbf", f64::ceil)?.is_some_and(|nbf| now_ms < nbf) {
            return Err(AuthError::NotYetValid);
        }
        numeric_date(claims, "iat", f64::floor)?;
        if let Some(audience) = &self.audience {
            // "If the principal processing the claim does not identify itself with a value in
            // the aud claim when this claim is present, then the JWT MUST be rejected" (4.1.3);
            // configured, an audience is required: a token minted for any service sharing the
            // key would pass otherwise.
            let named = match claims.get("aud") {
                Some(serde_json::Value::String(aud)) => aud == audience,
                Some(serde_json::Value::Array(auds)) => {
                    auds.iter().any(|aud| aud.as_str() == Some(audience.as_str()))
                }
                _ => false,
            };
            if !named {
                return Err(AuthError::WrongAudience);
            }
        }
        if let Some(issuer) = &self.issuer {
            if claims.get("iss").and_then(serde_json::Value::as_str) != Some(issuer.as_str()) {
                return Err(AuthError::WrongIssuer);
            }
        }
        Ok(exp)
    }

    fn key_for(&self, algorithm: Algorithm, kid: Option<&str>) -> Result<&DecodingKey, AuthError> {
        let Some(family) = family_of(algorithm)? else {
            let no_secret = || AuthError::BadSignature("no HMAC secret is configured".into());
            return self.hmac.as_ref().ok_or_else(no_secret);
        };
        let mut candidates = self.public.iter().filter(|k| k.family == family);
        let found = match kid {
            Some(kid) if self.public.iter().any(|k| k.kid.is_some()) => {
                candidates.find(|k| k.kid.as_deref() == Some(kid))
            }
            _ => candidates.next(),
        };
        found.map(|k| &k.key).ok_or_else(|| {
            AuthError::BadSignature(format!(
                "no {algorithm:?} key{}",
                match kid {
                    Some(kid) => format!(" with kid {kid:?}"),
                    None => String::new(),
                }
            ))
        })
    }
}

fn classify(error: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match error.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidAudience => AuthError::WrongAudience,
        K::InvalidIssuer => AuthError::WrongIssuer,
        K::InvalidSignature
        | K::InvalidAlgorithm
        | K::InvalidAlgorithmName
        | K::InvalidKeyFormat
        | K::InvalidEcdsaKey
        | K::InvalidRsaKey(_)
        | K::RsaFailedSigning => AuthError::BadSignature(error.to_string()),
        K::MissingRequiredClaim(claim) => AuthError::BadClaim(format!("{claim} is required")),
        _ => AuthError::Malformed(error.to_string()),
    }
}

/// Latest NumericDate taken, in seconds: the end of the year 9999. Past it a date is an
/// attacker's number (`2^64 - 1`), not a time anything should add a grace period to.
const MAX_NUMERIC_DATE_SECS: f64 = 253_402_300_799.0;

/// Claim `name` as a NumericDate (RFC 7519 2: seconds since the epoch, a JSON number that may
/// have a fraction), in Unix milliseconds rounded by `round` (floor for `exp`, ceil for
/// `nbf`: neither extends a token's life). `None` when absent.
fn numeric_date(
    claims: &serde_json::Value,
    name: &str,
    round: fn(f64) -> f64,
) -> Result<Option<u64>, AuthError> {
    let Some(value) = claims.get(name) else { return Ok(None) };
    let seconds = value
        .as_f64()
        .filter(|s| s.is_finite() && (0.0..=MAX_NUMERIC_DATE_SECS).contains(s))
        .ok_or_else(|| {
            AuthError::BadClaim(format!("{name}: not a NumericDate (seconds from 1970 to 9999)"))
        })?;
    // Below 2^53 milliseconds, so the f64 is exact enough and the cast cannot saturate.
    Ok(Some(round(seconds * 1000.0) as u64))
}

/// The permissions a verified token's claims grant; it expires at `expires_unix_ms`.
fn grant_of(
    claims: &serde_json::Value,
    expires_unix_ms: u64,
    max_info_bytes: usize,
) -> Result<Arc<Grant>, AuthError> {
    use serde_json::Value;
    let subject = match claims.get("sub") {
        None | Some(Value::Null) => None,
        Some(Value::String(sub)) => {
            // `sub` is the name the connection may claim, and names its inbox: the same rules
            // as NAME (no `@`, no wildcard token, which permissions would read as "every").
            validate_client_name(sub.as_bytes())
                .map_err(|e| AuthError::BadClaim(format!("sub: {e}")))?;
            Some(sub.as_str().into())
        }
        Some(_) => return Err(AuthError::BadClaim("sub: expected a string".into())),
    };
    let patterns = |claim: &str| -> Result<Patterns, AuthError> {
        let bad = |why: String| AuthError::BadClaim(format!("{claim}: {why}"));
        match claims.get(claim) {
            None | Some(Value::Null) => Ok(Patterns::default()),
            Some(Value::Array(items)) => {
                let texts = items
                    .iter()
                    .map(|item| item.as_str().ok_or_else(|| bad("expected strings".into())))
                    .collect::<Result<Vec<&str>, _>>()?;
                Patterns::parse(texts).map_err(|e| bad(e.to_string()))
            }
            Some(_) => Err(bad("expected a list of channel patterns".into())),
        }
    };
    let info = match claims.get("info") {
        None | Some(Value::Null) => None,
        Some(object @ Value::Object(_)) => {
            let compact = object.to_string();
            if compact.len() > max_info_bytes {
                return Err(AuthError::BadClaim(format!(
                    "info: {} bytes of JSON, the limit is {max_info_bytes}",
                    compact.len()
                )));
            }
            Some(compact.into_boxed_str())
        }
        Some(_) => return Err(AuthError::BadClaim("info: expected a JSON object".into())),
    };
    let admin = match claims.get("admin") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(admin)) => *admin,
        Some(_) => return Err(AuthError::BadClaim("admin: expected true or false".into())),
    };
    Ok(Arc::new(Grant {
        subject,
        subscribe: patterns("subscribe")?,
        publish: patterns("publish")?,
        everything: false,
        expires_unix_ms: Some(expires_unix_ms),
        issued_unix_ms: numeric_date(claims, "iat", f64::floor)?,
        info,
        admin,
    }))
}

/// Mints an HS256 token (`fanout token`, tests and the load generator). Fails only for an
/// empty secret.
pub fn mint_hs256(
    secret: &[u8],
    subject: Option<&str>,
    subscribe: &[String],
    publish: &[String],
    expires_unix_secs: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut claims = serde_json::json!({ "exp": expires_unix_secs });
    if let Some(subject) = subject {
        claims["sub"] = subject.into();
    }
    if !subscribe.is_empty() {
        claims["subscribe"] = subscribe.into();
    }
    if !publish.is_empty() {
        claims["publish"] = publish.into();
    }
    let header = jsonwebtoken::Header::new(Algorithm::HS256);
    let key = jsonwebtoken::EncodingKey::from_secret(secret)?;
    jsonwebtoken::encode(&header, &claims, &key)
}

/// Seconds since the Unix epoch.
pub fn unix_now_secs() -> u64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW_MS: u64 = 1_700_000_000_000;

    fn auth(audience: Option<&str>, issuer: Option<&str>) -> Auth {
        let config = AuthConfig {
            hmac_secret: Some(b"secret".to_vec()),
            audience: audience.map(Into::into),
            issuer: issuer.map(Into::into),
            ..AuthConfig::default()
        };
        Auth::new(&config).unwrap().unwrap()
    }

    #[test]
    fn numeric_dates_may_be_decimals_and_never_extend_a_token() {
        let auth = auth(None, None);
        let now = NOW_MS as f64 / 1000.0;
        // PyJWT writes `time.time() + ttl`.
        assert_eq!(auth.check_claims(&json!({ "exp": now + 60.25 }), NOW_MS), Ok(NOW_MS + 60_250));
        assert_eq!(
            auth.check_claims(&json!({ "exp": now + 0.0004 }), NOW_MS),
            Err(AuthError::Expired)
        );
        assert_eq!(auth.check_claims(&json!({ "exp": now }), NOW_MS), Err(AuthError::Expired));
        assert_eq!(
            auth.check_claims(&json!({ "exp": now + 60.0, "nbf": now + 0.0001 }), NOW_MS),
            Err(AuthError::NotYetValid),
            "nbf is rounded up"
        );
        assert!(auth.check_claims(&json!({ "exp": now + 60.0, "nbf": now - 0.5 }), NOW_MS).is_ok());
        assert!(auth.check_claims(&json!({ "exp": now + 60.0, "iat": now - 1.5 }), NOW_MS).is_ok());
    }

    #[test]
    fn absurd_numeric_dates_are_bad_claims() {
        let auth = auth(None, None);
        let exp_bad = |value: serde_json::Value| {
            matches!(
                auth.check_claims(&json!({ "exp": value }), NOW_MS),
                Err(AuthError::BadClaim(_))
            )
        };
        assert!(exp_bad(json!(u64::MAX)), "2^64 - 1");
        assert!(exp_bad(json!(-1)));
        assert!(exp_bad(json!(1e300)));
        assert!(exp_bad(json!("1700000000")), "a string is not a NumericDate");
        assert!(exp_bad(json!(null)));
        assert!(exp_bad(json!(true)));
        assert_eq!(
            auth.check_claims(&json!({}), NOW_MS),
            Err(AuthError::BadClaim("exp is required".into()))
        );
        let far = json!({ "exp": 4_102_444_800u64, "nbf": -5 });
        assert!(matches!(auth.check_claims(&far, NOW_MS), Err(AuthError::BadClaim(_))));
        let far = json!({ "exp": 4_102_444_800u64, "iat": "yesterday" });
        assert!(matches!(auth.check_claims(&far, NOW_MS), Err(AuthError::BadClaim(_))));
        // The last accepted date still leaves room for any grace period.
        let last = auth.check_claims(&json!({ "exp": MAX_NUMERIC_DATE_SECS }), NOW_MS).unwrap();
        assert!(last.checked_add(u32::MAX as u64).is_some());
    }

    #[test]
    fn a_configured_audience_or_issuer_is_required() {
        let exp = NOW_MS / 1000 + 60;
        let auth = auth(Some("chat"), Some("backend"));
        let check = |claims: serde_json::Value| auth.check_claims(&claims, NOW_MS);
        assert!(check(json!({ "exp": exp, "aud": "chat", "iss": "backend" })).is_ok());
        assert!(check(json!({ "exp": exp, "aud": ["x", "chat"], "iss": "backend" })).is_ok());
        assert_eq!(check(json!({ "exp": exp, "iss": "backend" })), Err(AuthError::WrongAudience));
        assert_eq!(
            check(json!({ "exp": exp, "aud": ["x"], "iss": "backend" })),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(
            check(json!({ "exp": exp, "aud": 7, "iss": "backend" })),
            Err(AuthError::WrongAudience)
        );
        assert_eq!(check(json!({ "exp": exp, "aud": "chat" })), Err(AuthError::WrongIssuer));
        assert_eq!(
            check(json!({ "exp": exp, "aud": "chat", "iss": "other" })),
            Err(AuthError::WrongIssuer)
        );
        // Not configured: not looked at.
        let open = super::tests::auth(None, None);
        assert!(open.check_claims(&json!({ "exp": exp, "aud": "x", "iss": 5 }), NOW_MS).is_ok());
    }

    #[test]
    fn a_subject_must_be_a_client_name() {
        for sub in ["*", "a.>", "@bob", "a b", "x.*.y"] {
            let refused = grant_of(&json!({ "sub": sub }), NOW_MS, DEFAULT_MAX_INFO_BYTES);
            assert!(matches!(refused, Err(AuthError::BadClaim(_))), "{sub}");
        }
        let grant = grant_of(&json!({ "sub": "alice" }), NOW_MS, DEFAULT_MAX_INFO_BYTES).unwrap();
        assert!(grant.may_claim(b"alice"));
        assert_eq!(grant.expires_unix_ms, Some(NOW_MS));
    }

    #[test]
    fn verify_reads_decimal_claims_from_a_signed_token() {
        let auth = auth(None, None);
        let key = jsonwebtoken::EncodingKey::from_secret(b"secret").unwrap();
        let header = jsonwebtoken::Header::new(Algorithm::HS256);
        let now = unix_now_ms() as f64 / 1000.0;
        let token =
            jsonwebtoken::encode(&header, &json!({ "exp": now + 30.5, "sub": "a" }), &key).unwrap();
        let grant = auth.verify(token.as_bytes()).unwrap();
        let expires = grant.expires_unix_ms.unwrap() as f64 / 1000.0;
        assert!((expires - (now + 30.5)).abs() < 0.01, "the deadline is the decimal exp");
        let stale = jsonwebtoken::encode(&header, &json!({ "exp": now - 0.5 }), &key).unwrap();
        assert_eq!(auth.verify(stale.as_bytes()), Err(AuthError::Expired));
    }
}
