//! `preset = "…"`: the request shape of a service users name, written as an
//! ordinary `http` action in `presets/<name>.toml`, under the user's own
//! keys. Every key the user sets replaces the preset's (a `query` table
//! replaces the preset's whole table; a body, `json`, `form` or `body`,
//! replaces the preset's body), except `vars`, which are merged key by key.
//! A preset's `vars` with an empty value are the ones the user must give.

use crate::config::{invalid, ActionSettings, ConfigError};

/// Every preset: its name and its TOML.
pub const PRESETS: &[(&str, &str)] = &[
    ("slack", include_str!("presets/slack.toml")),
    ("discord", include_str!("presets/discord.toml")),
    ("hubspot", include_str!("presets/hubspot.toml")),
    ("mailchimp", include_str!("presets/mailchimp.toml")),
    ("sendgrid", include_str!("presets/sendgrid.toml")),
    ("facebook-capi", include_str!("presets/facebook-capi.toml")),
    ("ga4", include_str!("presets/ga4.toml")),
    ("postback", include_str!("presets/postback.toml")),
];

/// What each preset cannot work without, beside its empty `vars`.
const NEEDS: &[(&str, &[Need])] = &[
    ("slack", &[Need::Url]),
    ("discord", &[Need::Url]),
    ("hubspot", &[Need::Bearer]),
    ("mailchimp", &[Need::BasicPassword]),
    ("sendgrid", &[Need::Bearer]),
    ("facebook-capi", &[Need::Query("access_token")]),
    ("ga4", &[Need::Query("api_secret")]),
    ("postback", &[Need::Url]),
];

enum Need {
    /// `url`, `url_env` or `url_file`.
    Url,
    Bearer,
    BasicPassword,
    /// A secret query parameter, in `query_env` (or a plain one in `query`).
    Query(&'static str),
}

/// The preset called `name`, as settings.
pub fn preset(name: &str) -> Option<ActionSettings> {
    let (_, text) = PRESETS.iter().find(|(n, _)| *n == name)?;
    // The presets are tested to parse (below): a failure is a build defect.
    toml::from_str(text).ok()
}

/// `given` with its preset's keys filled in (a copy of `given` without one).
pub fn apply(
    given: &ActionSettings,
    key: &dyn Fn(&str) -> String,
) -> Result<ActionSettings, ConfigError> {
    let Some(name) = given.preset.as_deref() else {
        return Ok(given.clone());
    };
    let base = preset(name).ok_or_else(|| {
        let known: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        invalid(
            key("preset"),
            format!("unknown preset `{name}` ({})", known.join(", ")),
        )
    })?;
    if !matches!(given.kind.as_str(), "" | "http") {
        return Err(invalid(key("preset"), "applies to kind = \"http\" only"));
    }
    let mut s = given.clone();
    s.kind = "http".into();
    s.method = s.method.or(base.method);
    if s.url.is_none() && s.url_env.is_none() && s.url_file.is_none() {
        s.url = base.url;
    }
    s.only_if = s.only_if.or(base.only_if);
    s.include_customer = s.include_customer.or(base.include_customer);
    s.basic_user = s.basic_user.or(base.basic_user);
    for (k, v) in base.vars {
        s.vars.entry(k).or_insert(v);
    }
    if s.query.is_empty() {
        s.query = base.query;
    }
    if s.headers.is_empty() {
        s.headers = base.headers;
    }
    if s.json.is_none() && s.form.is_none() && s.body.is_none() {
        s.json = base.json;
        s.form = base.form;
        s.body = base.body;
        s.content_type = base.content_type;
    }
    if s.when.types.is_empty() {
        s.when.types = base.when.types;
    }
    if let Some((k, _)) = s.vars.iter().find(|(_, v)| v.is_empty()) {
        return Err(invalid(
            key(&format!("vars.{k}")),
            format!("is required by preset `{name}`"),
        ));
    }
    let needs = NEEDS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(&[][..], |(_, n)| n);
    for need in needs {
        let (present, what) = match need {
            Need::Url => (
                s.url.is_some() || s.url_env.is_some() || s.url_file.is_some(),
                "url_env".to_owned(),
            ),
            Need::Bearer => (
                s.bearer_env.is_some() || s.bearer_file.is_some(),
                "bearer_env".to_owned(),
            ),
            Need::BasicPassword => (
                s.basic_password_env.is_some() || s.basic_password_file.is_some(),
                "basic_password_env".to_owned(),
            ),
            Need::Query(q) => (
                s.query_env.contains_key(*q) || s.query.contains_key(*q),
                format!("query_env.{q}"),
            ),
        };
        if !present {
            return Err(invalid(
                key(&what),
                format!("is required by preset `{name}`"),
            ));
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_parses_and_is_an_http_action() {
        for (name, text) in PRESETS {
            let s: ActionSettings =
                toml::from_str(text).unwrap_or_else(|e| panic!("preset {name}: {e}"));
            assert_eq!(s.kind, "http", "{name}");
            assert!(
                NEEDS.iter().any(|(n, _)| n == name),
                "{name} has no NEEDS entry"
            );
        }
    }

    #[test]
    fn the_users_keys_win_and_tables_merge() {
        let key = |k: &str| format!("actions[0].{k}");
        let mut mine = ActionSettings {
            name: "tracker".into(),
            preset: Some("postback".into()),
            url: Some("https://t.example/pb".into()),
            ..Default::default()
        };
        let s = apply(&mine, &key).unwrap();
        assert_eq!(s.kind, "http");
        assert_eq!(s.method.as_deref(), Some("GET"));
        assert_eq!(s.url.as_deref(), Some("https://t.example/pb"));
        assert!(s.query.contains_key("clickid"));
        mine.query.insert("cid".into(), "{{ click_id }}".into());
        let s = apply(&mine, &key).unwrap();
        assert_eq!(
            s.query.keys().collect::<Vec<_>>(),
            ["cid"],
            "replaced whole"
        );
        let mut chimp = ActionSettings {
            preset: Some("mailchimp".into()),
            basic_password_env: Some("MC_KEY".into()),
            ..Default::default()
        };
        chimp.vars.insert("dc".into(), "us21".into());
        let e = apply(&chimp, &key).unwrap_err().to_string();
        assert!(e.contains("vars.list_id") && e.contains("required"), "{e}");
        chimp.vars.insert("list_id".into(), "abc".into());
        let s = apply(&chimp, &key).unwrap();
        assert_eq!(s.vars["status_if_new"], "subscribed");
        chimp.basic_password_env = None;
        let e = apply(&chimp, &key).unwrap_err().to_string();
        assert!(e.contains("basic_password_env"), "{e}");
        mine.preset = Some("nope".into());
        let e = apply(&mine, &key).unwrap_err().to_string();
        assert!(
            e.contains("actions[0].preset") && e.contains("slack"),
            "{e}"
        );
    }

    /// The README's preset blocks are complete: each builds as it is, with
    /// its environment variables set.
    #[test]
    fn the_readme_blocks_build() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("#### Presets").expect("the presets section");
        let end = start
            + readme[start..]
                .find("What each preset sends")
                .expect("its end");
        let section = &readme[start..end];
        let blocks: Vec<&str> = section
            .split("```toml")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .collect();
        assert_eq!(blocks.len(), PRESETS.len(), "one block per preset");
        #[derive(serde::Deserialize)]
        struct Doc {
            actions: Vec<ActionSettings>,
        }
        let mut seen = Vec::new();
        for block in blocks {
            let doc: Doc = toml::from_str(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
            for a in &doc.actions {
                for var in a
                    .url_env
                    .iter()
                    .chain(a.bearer_env.iter())
                    .chain(a.basic_password_env.iter())
                    .chain(a.query_env.values())
                {
                    std::env::set_var(var, "https://hooks.example.com/T/B/secret");
                }
                seen.extend(a.preset.clone());
            }
            crate::actions::Actions::from_settings(&doc.actions)
                .unwrap_or_else(|e| panic!("{e}\n{block}"));
        }
        let mut names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        seen.sort();
        assert_eq!(seen, names, "every preset documented");
    }
}
