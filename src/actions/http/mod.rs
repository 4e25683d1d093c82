//! `kind = "http"`: a request of the user's shape to any API (Slack, HubSpot,
//! Mailchimp, a tracker's postback…), its URL, query, headers and body
//! rendered from templates with the event as context
//! ([`super::template`]). Credentials come from the environment or files
//! and never pass through templates or into errors. The end of a run is
//! decided as for webhooks ([`super::outbound::outcome`]). [`presets`]
//! fill in the shape of the services users name.

mod body;
pub mod presets;

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};

use super::{outbound, Event, Outcome};
use crate::config::{invalid, secret_from, ActionSettings, ConfigError};
use body::{Node, Templates, Text};

enum Body {
    None,
    Json(Node),
    Form(Vec<(String, Text)>),
    Raw {
        template: Text,
        content_type: HeaderValue,
    },
}

pub struct Http {
    method: Method,
    /// The URL template (or the URL a secret gave, as a template too).
    url: Text,
    /// The origin for messages, when the URL is not a secret or a template.
    origin: Option<String>,
    query: Vec<(String, Text)>,
    headers: Vec<(HeaderName, Text)>,
    body: Body,
    only_if: Option<Text>,
    vars: BTreeMap<String, String>,
    /// Secret query parameters and headers, and the `Authorization`.
    secret_query: Vec<(String, SecretString)>,
    secret_headers: HeaderMap,
    /// Every secret value, masked in what a run keeps of an answer.
    secrets: Vec<SecretString>,
    templates: Templates,
    client: reqwest::Client,
    allow_private: bool,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("method", &self.method)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Http {
    /// Where it sends, without path or credentials, when that is known
    /// before an event: `https://api.hubapi.com`.
    pub fn origin(&self) -> String {
        self.origin
            .clone()
            .unwrap_or_else(|| "a URL given by a secret or a template".into())
    }

    pub fn from_settings(
        s: &ActionSettings,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Self, ConfigError> {
        let mut templates = Templates::new();
        let secret_url = secret_from(&s.url_env, &s.url_file, (&key("url_env"), &key("url_file")))?;
        let (url_source, secret) = match (&s.url, &secret_url) {
            (Some(u), None) => (u.clone(), false),
            (None, Some(u)) => (u.trim().to_owned(), true),
            (None, None) => {
                return Err(invalid(
                    key("url"),
                    "is required for kind = \"http\" (or url_env, url_file)",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(invalid(key("url"), "set url or url_env/url_file, not both"))
            }
        };
        let origin = if url_source.contains("{{") || url_source.contains("{%") {
            None
        } else {
            let url = reqwest::Url::parse(&url_source).map_err(|_| {
                invalid(
                    key(if secret { "url_env" } else { "url" }),
                    "is not a URL".to_owned(),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(invalid(
                    key("url"),
                    "must be an http:// or https:// URL with a host",
                ));
            }
            (!secret).then(|| url.origin().ascii_serialization())
        };
        let mut secrets: Vec<SecretString> = Vec::new();
        if secret {
            secrets.push(SecretString::from(url_source.clone()));
        }
        let url = templates.text(key("url"), &url_source)?;
        let method = match s
            .method
            .as_deref()
            .unwrap_or("POST")
            .to_ascii_uppercase()
            .as_str()
        {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "PATCH" => Method::PATCH,
            "DELETE" => Method::DELETE,
            other => {
                return Err(invalid(
                    key("method"),
                    format!("`{other}`: GET, POST, PUT, PATCH or DELETE"),
                ))
            }
        };
        let given = [s.json.is_some(), s.form.is_some(), s.body.is_some()];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(invalid(key("json"), "set one of json, form and body"));
        }
        let body = match (&s.json, &s.form, &s.body) {
            (Some(doc), _, _) => Body::Json(templates.json(&key("json"), doc)?),
            (_, Some(form), _) => Body::Form(templates.pairs(&key("form"), form)?),
            (_, _, Some(raw)) => {
                let ct = s
                    .content_type
                    .as_deref()
                    .ok_or_else(|| invalid(key("content_type"), "is required with a raw body"))?;
                Body::Raw {
                    template: templates.text(key("body"), raw)?,
                    content_type: HeaderValue::from_str(ct)
                        .map_err(|_| invalid(key("content_type"), "is not a header value"))?,
                }
            }
            _ => Body::None,
        };
        if s.content_type.is_some() && !matches!(body, Body::Raw { .. }) {
            return Err(invalid(key("content_type"), "applies only to a raw body"));
        }
        if matches!(method, Method::GET) && !matches!(body, Body::None) {
            return Err(invalid(key("method"), "a GET request has no body"));
        }
        let headers = s
            .headers
            .iter()
            .map(|(name, v)| {
                let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    invalid(key("headers"), format!("`{name}` is not a header name"))
                })?;
                Ok((n, templates.text(format!("{}.{name}", key("headers")), v)?))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        let query = templates.pairs(&key("query"), &s.query)?;
        // `only_if = ""` switches a preset's condition off.
        let only_if = s
            .only_if
            .as_deref()
            .filter(|t| !t.trim().is_empty())
            .map(|t| templates.condition(key("only_if"), t))
            .transpose()?;
        let env = |var: &str, k: String| {
            std::env::var(var)
                .map(|v| SecretString::from(v.trim().to_owned()))
                .map_err(|_| invalid(k, format!("environment variable `{var}` is not set")))
        };
        let mut secret_headers = HeaderMap::new();
        for (name, var) in &s.headers_env {
            let k = format!("{}.{name}", key("headers_env"));
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid(k.clone(), "is not a header name"))?;
            let value = env(var, k.clone())?;
            secret_headers.insert(n, sensitive(value.clone(), &k)?);
            secrets.push(value);
        }
        let bearer = secret_from(
            &s.bearer_env,
            &s.bearer_file,
            (&key("bearer_env"), &key("bearer_file")),
        )?
        .map(SecretString::from);
        let password = secret_from(
            &s.basic_password_env,
            &s.basic_password_file,
            (&key("basic_password_env"), &key("basic_password_file")),
        )?
        .map(SecretString::from);
        secrets.extend(bearer.iter().chain(password.iter()).cloned());
        let authorization = match (bearer, &s.basic_user, password) {
            (None, None, None) => None,
            (Some(token), None, None) => Some(format!("Bearer {}", token.expose_secret())),
            (None, Some(_), None) => {
                return Err(invalid(
                    key("basic_user"),
                    "needs basic_password_env or basic_password_file",
                ))
            }
            (None, Some(user), Some(password)) => {
                use base64::Engine as _;
                let pair = format!("{user}:{}", password.expose_secret());
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))
            }
            (None, None, Some(_)) => {
                return Err(invalid(
                    key("basic_user"),
                    "is required with a basic password",
                ))
            }
            (Some(_), _, _) => {
                return Err(invalid(
                    key("bearer_env"),
                    "set bearer or basic credentials, not both",
                ))
            }
        };
        if let Some(a) = authorization {
            secret_headers.insert(
                AUTHORIZATION,
                sensitive(SecretString::from(a), &key("bearer_env"))?,
            );
        }
        let secret_query = s
            .query_env
            .iter()
            .map(|(name, var)| {
                Ok((
                    name.clone(),
                    env(var, format!("{}.{name}", key("query_env")))?,
                ))
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        secrets.extend(secret_query.iter().map(|(_, v)| v.clone()));
        // As sent in a query string, too.
        let encoded: Vec<SecretString> = secrets
            .iter()
            .map(|s| {
                form_urlencoded::byte_serialize(s.expose_secret().as_bytes()).collect::<String>()
            })
            .map(SecretString::from)
            .collect();
        secrets.extend(encoded);
        secrets.retain(|s| s.expose_secret().len() >= 4);
        let client = outbound::client(Duration::from_millis(s.timeout_ms), s.allow_private_targets)
            .map_err(|e| invalid(key("url"), format!("cannot build an HTTP client: {e}")))?;
        Ok(Http {
            method,
            url,
            origin,
            query,
            headers,
            body,
            only_if,
            vars: s.vars.clone(),
            secret_query,
            secret_headers,
            secrets,
            templates,
            client,
            allow_private: s.allow_private_targets,
        })
    }

    pub async fn send(&self, event: &Event) -> Outcome {
        let request = match self.request(event) {
            Ok(Some(r)) => r,
            // `only_if` rendered empty: nothing to send, and nothing to retry.
            Ok(None) => return Outcome::Done,
            Err(error) => return Outcome::Failed { error },
        };
        let secrets: Vec<&str> = self.secrets.iter().map(|s| s.expose_secret()).collect();
        match request.send().await {
            Ok(response) => outbound::outcome(response, &secrets).await,
            Err(e) => outbound::transport(e),
        }
    }

    /// The request for `event`, or `None` when `only_if` says not to send.
    fn request(&self, event: &Event) -> Result<Option<reqwest::RequestBuilder>, String> {
        let ctx = super::template::context(event, &self.vars);
        if let Some(t) = &self.only_if {
            if !self.templates.holds(t, &ctx)? {
                return Ok(None);
            }
        }
        let text = self.templates.render(&self.url, &ctx)?;
        if has_dot_segment(&text) {
            return Err("the URL template gave a path with a `.` or `..` segment".into());
        }
        let mut url = reqwest::Url::parse(text.trim())
            .map_err(|_| "the URL template did not give a URL".to_owned())?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err("the URL template did not give an http(s) URL with a host".into());
        }
        let query = self.templates.render_pairs(&self.query, &ctx)?;
        if !query.is_empty() || !self.secret_query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &query {
                pairs.append_pair(k, v);
            }
            for (k, v) in &self.secret_query {
                pairs.append_pair(k, v.expose_secret());
            }
        }
        if let Some(error) = outbound::refuse_literal(&url, self.allow_private) {
            return Err(error);
        }
        let mut request = self
            .client
            .request(self.method.clone(), url)
            .header("kaching-event-id", event.id());
        let own_type = self.headers.iter().any(|(n, _)| n == CONTENT_TYPE);
        let content_type = |r: reqwest::RequestBuilder, v: HeaderValue| {
            if own_type {
                r
            } else {
                r.header(CONTENT_TYPE, v)
            }
        };
        for (name, t) in &self.headers {
            let v = self.templates.render(t, &ctx)?;
            let v = HeaderValue::from_str(v.trim())
                .map_err(|_| format!("the header {name} rendered to no valid header value"))?;
            request = request.header(name, v);
        }
        request = request.headers(self.secret_headers.clone());
        request = match &self.body {
            Body::None => request,
            Body::Json(node) => {
                let doc = self.templates.render_json(node, &ctx)?;
                let bytes = serde_json::to_vec(&doc).map_err(|e| e.to_string())?;
                content_type(request, HeaderValue::from_static("application/json")).body(bytes)
            }
            Body::Form(pairs) => {
                let pairs = self.templates.render_pairs(pairs, &ctx)?;
                let encoded = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs)
                    .finish();
                content_type(
                    request,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                )
                .body(encoded)
            }
            Body::Raw {
                template,
                content_type: ct,
            } => content_type(request, ct.clone()).body(self.templates.render(template, &ctx)?),
        };
        Ok(Some(request))
    }
}

/// Does the path of a rendered URL hold a `.` or `..` segment (also
/// percent-encoded), which parsing would resolve into another path?
fn has_dot_segment(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split(['?', '#']).next().unwrap_or("");
    path.split('/').skip(1).any(|segment| {
        let s = segment.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    })
}

/// A header value marked sensitive (left out of debug output).
fn sensitive(v: SecretString, key: &str) -> Result<HeaderValue, ConfigError> {
    let mut h = HeaderValue::from_str(v.expose_secret())
        .map_err(|_| invalid(key, "the secret is not a valid header value"))?;
    h.set_sensitive(true);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug_output_and_errors() {
        std::env::set_var("KACHING_UNIT_HTTP_TOKEN", "tok-very-secret");
        let s = ActionSettings {
            name: "x".into(),
            kind: "http".into(),
            url: Some("https://api.example.com/{{ receipt }}".into()),
            bearer_env: Some("KACHING_UNIT_HTTP_TOKEN".into()),
            query_env: [("key".to_owned(), "KACHING_UNIT_HTTP_TOKEN".to_owned())].into(),
            ..Default::default()
        };
        let h = Http::from_settings(&s, &|k| format!("actions[0].{k}")).unwrap();
        let shown = format!("{h:?} {}", h.origin());
        assert!(!shown.contains("tok-very-secret"), "{shown}");
        let e = ActionSettings {
            bearer_env: Some("KACHING_UNIT_HTTP_UNSET".into()),
            ..s
        };
        let err = Http::from_settings(&e, &|k| format!("actions[0].{k}")).unwrap_err();
        assert!(err.to_string().contains("actions[0].bearer_env"), "{err}");
    }

    #[test]
    fn a_body_on_a_get_and_two_bodies_are_refused() {
        let base = ActionSettings {
            name: "x".into(),
            kind: "http".into(),
            url: Some("https://api.example.com/".into()),
            ..Default::default()
        };
        let key = |k: &str| format!("actions[0].{k}");
        let get = ActionSettings {
            method: Some("get".into()),
            form: Some(Default::default()),
            ..base.clone()
        };
        assert!(Http::from_settings(&get, &key).is_err());
        let two = ActionSettings {
            json: Some(serde_json::json!({})),
            body: Some("x".into()),
            content_type: Some("text/plain".into()),
            ..base.clone()
        };
        assert!(Http::from_settings(&two, &key).is_err());
        let raw = ActionSettings {
            body: Some("x".into()),
            ..base
        };
        let err = Http::from_settings(&raw, &key).unwrap_err().to_string();
        assert!(err.contains("content_type"), "{err}");
    }
}
