//! `kind = "webhook"`: POST the event as JSON, signed per the Standard
//! Webhooks spec when a `secret` is set. 2xx is done; 408, 429, 5xx,
//! timeouts and connection errors are retried (honouring `Retry-After`);
//! any other status fails at once. Redirects are followed only to the same
//! scheme, host and port, and only public addresses are reached unless
//! `allow_private_targets` (see [`super::outbound`]).

use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

use super::{outbound, Event, Outcome};
use crate::config::{invalid, ActionSettings, ConfigError};

pub struct Webhook {
    url: reqwest::Url,
    client: reqwest::Client,
    /// The decoded `whsec_` key.
    key: Option<SecretBox<Vec<u8>>>,
    headers: HeaderMap,
    allow_private: bool,
}

impl Webhook {
    /// Where it posts, without path or credentials: `https://hooks.example.com`.
    pub fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("host", &self.url.host_str())
            .field("signed", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl Webhook {
    pub fn from_settings(
        s: &ActionSettings,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Self, ConfigError> {
        let secret_url = crate::config::secret_from(
            &s.url_env,
            &s.url_file,
            (&key("url_env"), &key("url_file")),
        )?;
        let url = match (&s.url, secret_url) {
            (Some(raw), None) => reqwest::Url::parse(raw)
                .map_err(|e| invalid(key("url"), format!("`{raw}` is not a URL: {e}")))?,
            (None, Some(raw)) => reqwest::Url::parse(raw.trim())
                .map_err(|_| invalid(key("url_env"), "is not a URL"))?,
            (None, None) => {
                return Err(invalid(
                    key("url"),
                    "is required for kind = \"webhook\" (or url_env, url_file)",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(key("url"), "set url or url_env/url_file, not both"))
            }
        };
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid(
                key("url"),
                "must be an http:// or https:// URL with a host",
            ));
        }
        let signing_key = s
            .secret
            .as_ref()
            .map(|secret| {
                let text = secret.expose_secret();
                let b64 = text.strip_prefix("whsec_").ok_or_else(|| {
                    invalid(
                        key("secret"),
                        "must be a Standard Webhooks secret: whsec_ and base64",
                    )
                })?;
                STANDARD
                    .decode(b64)
                    .map(|k| SecretBox::new(Box::new(k)))
                    .map_err(|_| invalid(key("secret"), "the part after whsec_ is not base64"))
            })
            .transpose()?;
        let mut headers = HeaderMap::new();
        for (name, value) in &s.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(key("headers"), format!("`{name}` is not a header name")))?;
            let v = HeaderValue::from_str(value).map_err(|_| {
                invalid(
                    key("headers"),
                    format!("the value of `{name}` is not a header value"),
                )
            })?;
            headers.insert(n, v);
        }
        let client = outbound::client(Duration::from_millis(s.timeout_ms), s.allow_private_targets)
            .map_err(|e| invalid(key("url"), format!("cannot build an HTTP client: {e}")))?;
        Ok(Webhook {
            url,
            client,
            key: signing_key,
            headers,
            allow_private: s.allow_private_targets,
        })
    }

    pub async fn send(&self, event: &Event) -> Outcome {
        let body = match serde_json::to_vec(event) {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Failed {
                    error: format!("cannot encode the event: {e}"),
                }
            }
        };
        if let Some(error) = outbound::refuse_literal(&self.url, self.allow_private) {
            return Outcome::Failed { error };
        }
        let timestamp = chrono::Utc::now().timestamp().to_string();
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", event.id())
            .header("webhook-timestamp", &timestamp);
        if let Some(key) = &self.key {
            request = request.header(
                "webhook-signature",
                sign(key.expose_secret(), event.id(), &timestamp, &body),
            );
        }
        match request.body(body).send().await {
            Ok(response) => outbound::outcome(response, &[]).await,
            Err(e) => outbound::transport(e),
        }
    }
}

/// `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` (Standard Webhooks).
fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    // HMAC takes keys of any length: new_from_slice cannot fail here.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}
