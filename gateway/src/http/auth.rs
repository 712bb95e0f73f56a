//! Bearer tokens of the HTTP API (`[[http.tokens]]`): an axum middleware
//! that authenticates every request and checks what the route needs, and
//! the [`Access`] it leaves for handlers that check topics named in a body
//! or query (consumer groups).
//!
//! With no token configured the API is open, as before. With any:
//! `/healthz` and `/readyz` stay open (probes carry no secrets and reveal
//! nothing), everything else needs `Authorization: Bearer <token>`: 401
//! with `WWW-Authenticate: Bearer` when it is missing or unknown, 403 when
//! the token's scope does not cover the request. Tokens are compared as
//! SHA-256 digests in constant time, so `token_hash` and `token` work alike
//! and timing does not reveal how much of a guess was right.

use super::ApiError;
use crate::state::Shared;
use crate::topics::Topic;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest as _, Sha256};
use sluice_config::{HttpToken, ALL_SERVICES};
use std::sync::Arc;
use subtle::ConstantTimeEq as _;

/// What one token may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Services of `produce`/`consume`; `None` for every service.
    services: Option<Vec<String>>,
    produce: bool,
    consume: bool,
    admin: bool,
    metrics: bool,
}

/// What the current request may do: `None` when no tokens are configured
/// (everything), else the grant of its token. Set by [`require_token`].
#[derive(Debug, Clone)]
pub struct Access(pub Option<Arc<Grant>>);

/// The configured tokens.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tokens(Vec<([u8; 32], Arc<Grant>)>);

impl Tokens {
    /// From validated `[[http.tokens]]`.
    pub fn new(tokens: &[HttpToken]) -> Tokens {
        Tokens(
            tokens
                .iter()
                .map(|t| {
                    let digest = t.hash_digest().unwrap_or_else(|| digest(t.token.as_deref().unwrap_or("")));
                    let services =
                        (!t.services.iter().any(|s| s == ALL_SERVICES)).then(|| t.services.clone());
                    let grant = Grant {
                        services,
                        produce: t.produce,
                        consume: t.consume,
                        admin: t.admin,
                        metrics: t.metrics,
                    };
                    (digest, Arc::new(grant))
                })
                .collect(),
        )
    }

    /// The grant of `token`; every entry is compared, in constant time.
    pub fn find(&self, token: &str) -> Option<Arc<Grant>> {
        let presented = digest(token);
        let mut found = None;
        for (d, grant) in &self.0 {
            if bool::from(d.ct_eq(&presented)) {
                found = Some(grant.clone());
            }
        }
        found
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// What a route needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    Nothing,
    Produce(String),
    Consume(String),
    /// Consumer groups: `consume` on the topics the handler finds.
    ConsumeSome,
    Admin,
    Metrics,
    /// Any valid token (unknown paths: 404 after authentication).
    Token,
}

fn need(method: &Method, path: &str) -> Need {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        // `/` is the status page (feature `status-page`): static, it holds no
        // data and asks for a token itself.
        // `/v1/openapi.json` describes the API, public like any API docs.
        ["healthz"] | ["readyz"] | [""] | ["v1", "openapi.json"] => Need::Nothing,
        // The status feeds and the rules' counters show what `/metrics` shows.
        ["metrics"] | ["v1", "status"] | ["v1", "status", "stream"] | ["v1", "rules"] => Need::Metrics,
        ["v1", "topics"]
        | ["v1", "services"]
        | ["v1", "services", _]
        | ["v1", "uplinks"]
        | ["v1", "reload"] => Need::Admin,
        ["v1", "topics", t, "records"] if method == Method::POST => Need::Produce((*t).to_owned()),
        ["v1", "topics", t, "partitions", _, "records"] => Need::Consume((*t).to_owned()),
        ["v1", "groups", ..] => Need::ConsumeSome,
        _ => Need::Token,
    }
}

impl Grant {
    fn covers(&self, service: &str) -> bool {
        self.services.as_ref().is_none_or(|s| s.iter().any(|x| x == service))
    }

    fn scope(&self) -> String {
        match &self.services {
            None => "all services".to_owned(),
            Some(s) if s.is_empty() => "no services".to_owned(),
            Some(s) => format!("services {}", s.join(", ")),
        }
    }
}

impl Access {
    /// 403 unless the request may consume `topic`.
    pub fn check_consume(&self, topic: &Topic) -> Result<(), ApiError> {
        match &self.0 {
            Some(g) if !(g.consume && g.covers(&topic.service)) => Err(forbidden(format!(
                "this token may not consume topic {:?} (service {:?}); it may consume {}",
                topic.name,
                topic.service,
                if g.consume { g.scope() } else { "nothing".to_owned() }
            ))),
            _ => Ok(()),
        }
    }

    /// Whether the request may use admin endpoints (change weights).
    pub fn is_admin(&self) -> bool {
        self.0.as_ref().is_none_or(|g| g.admin)
    }

    /// Whether the request may consume `topic` (for listings).
    pub fn may_consume(&self, topic: &Topic) -> bool {
        self.check_consume(topic).is_ok()
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, message)
}

fn unauthorized(message: &str, error: Option<&str>) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"sluice\", error=\"{e}\""),
        None => "Bearer realm=\"sluice\"".to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// The service a topic named in a path belongs to (configured, existing,
/// or the default service it would be created under).
fn service_of(shared: &Shared, topic: &str) -> String {
    shared
        .topics
        .get(topic)
        .map_or_else(|| shared.config.service_of_topic(topic).to_owned(), |t| t.service.clone())
}

/// The middleware: authenticates, checks the route's need, and leaves
/// [`Access`] in the request's extensions.
pub async fn require_token(State(shared): State<Shared>, mut req: Request, next: Next) -> Response {
    // (Replaced by a configuration reload: each request sees one set.)
    let tokens = shared.tokens();
    if tokens.0.is_empty() {
        req.extensions_mut().insert(Access(None));
        return next.run(req).await;
    }
    let need = need(req.method(), req.uri().path());
    if need == Need::Nothing {
        return next.run(req).await;
    }
    // Names in paths never need escapes; refusing them keeps the path this
    // check sees the same as the one the handlers see.
    if req.uri().path().contains('%') {
        return ApiError::bad_request(
            "percent-encoded paths are not accepted; topic and group names never need it",
        )
        .into_response();
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(presented) = presented else {
        return unauthorized("missing bearer token: send Authorization: Bearer <token>", None);
    };
    let Some(grant) = tokens.find(presented) else {
        return unauthorized("unknown bearer token", Some("invalid_token"));
    };
    let refused = match &need {
        Need::Nothing | Need::Token => None,
        Need::Admin if !grant.admin => {
            Some("this token may not use admin endpoints (needs admin = true)".to_owned())
        }
        Need::Metrics if !(grant.admin || grant.metrics) => {
            Some("this token may not read /metrics (needs metrics = true or admin = true)".to_owned())
        }
        Need::ConsumeSome if !grant.consume => {
            Some("this token may not use consumer groups (needs consume = true)".to_owned())
        }
        Need::Produce(t) | Need::Consume(t) => {
            let (allowed, verb) = match &need {
                Need::Produce(_) => (grant.produce, "produce to"),
                _ => (grant.consume, "consume"),
            };
            let service = service_of(&shared, t);
            (!(allowed && grant.covers(&service))).then(|| {
                let scope = if allowed { grant.scope() } else { "nothing".to_owned() };
                format!("this token may not {verb} topic {t:?} (service {service:?}); it may {verb} {scope}")
            })
        }
        Need::Admin | Need::Metrics | Need::ConsumeSome => None,
    };
    if let Some(message) = refused {
        return forbidden(message).into_response();
    }
    req.extensions_mut().insert(Access(Some(grant)));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(toml: &str) -> Tokens {
        let cfg = sluice_config::Config::from_toml_str(toml).expect("config");
        Tokens::new(&cfg.http.tokens)
    }

    #[test]
    fn routes_map_to_needs() {
        let m = Method::GET;
        assert_eq!(need(&m, "/healthz"), Need::Nothing);
        assert_eq!(need(&m, "/readyz"), Need::Nothing);
        assert_eq!(need(&m, "/metrics"), Need::Metrics);
        assert_eq!(need(&m, "/v1/topics"), Need::Admin);
        assert_eq!(need(&Method::PUT, "/v1/services/logs"), Need::Admin);
        assert_eq!(need(&m, "/v1/uplinks"), Need::Admin);
        assert_eq!(need(&Method::POST, "/v1/topics/t/records"), Need::Produce("t".into()));
        assert_eq!(need(&m, "/v1/topics/t/partitions/0/records"), Need::Consume("t".into()));
        assert_eq!(need(&Method::POST, "/v1/groups/g/fetch"), Need::ConsumeSome);
        assert_eq!(need(&m, "/v1/nothing"), Need::Token);
        assert_eq!(need(&m, "/"), Need::Nothing);
        assert_eq!(need(&m, "/v1/openapi.json"), Need::Nothing);
        assert_eq!(need(&m, "/v1/status"), Need::Metrics);
        assert_eq!(need(&m, "/v1/status/stream"), Need::Metrics);
        assert_eq!(need(&m, "/v1/status/other"), Need::Token);
    }

    #[test]
    fn tokens_are_found_by_secret_or_hash_and_scopes_apply() {
        let hash =
            format!("sha256:{}", digest("second-token-0123456789").map(|b| format!("{b:02x}")).concat());
        let t = tokens(&format!(
            "[[service]]\nname = \"a\"\n[[http.tokens]]\ntoken = \"first-token-0123456789\"\nservices = [\"a\"]\n\
             produce = true\n[[http.tokens]]\ntoken_hash = \"{hash}\"\nservices = [\"*\"]\nconsume = true\n"
        ));
        let first = t.find("first-token-0123456789").expect("by secret");
        assert!(first.produce && !first.consume && first.covers("a") && !first.covers("default"));
        let second = t.find("second-token-0123456789").expect("by hash");
        assert!(second.consume && second.covers("anything"));
        assert!(t.find("first-token-012345678").is_none());
        assert!(t.find("").is_none());
    }
}
