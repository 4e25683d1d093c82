//! The templated parts of a request, compiled once: a JSON document whose
//! string values are templates (kaching serialises it, so nothing a
//! template inserts can break or inject into it), a form, or raw text.

use std::collections::BTreeMap;

use minijinja::Value;
use serde_json::Value as Json;

use crate::config::{invalid, ConfigError};

/// Templates of one action, by name, in one environment.
pub struct Templates {
    env: minijinja::Environment<'static>,
    count: usize,
}

impl Templates {
    pub fn new() -> Templates {
        Templates {
            env: super::super::template::environment(),
            count: 0,
        }
    }

    /// Adds `source` as a text template; `key` names it in errors.
    pub fn text(&mut self, key: String, source: &str) -> Result<Text, ConfigError> {
        self.add(key, source.to_owned()).map(Text)
    }

    fn add(&mut self, key: String, source: String) -> Result<String, ConfigError> {
        self.count += 1;
        let name = format!("t{}", self.count);
        self.env
            .add_template_owned(name.clone(), source)
            .map_err(|e| invalid(key, format!("template error: {e}")))?;
        Ok(name)
    }

    /// A condition (`only_if`): one `{{ expression }}` is true or false as
    /// minijinja's `if` takes it; other text holds when it renders to
    /// something but `false`, `none` or `0`.
    pub fn condition(&mut self, key: String, source: &str) -> Result<Text, ConfigError> {
        let source = match single_expression(source) {
            Some(expr) => format!("{{% if ({expr}) %}}1{{% endif %}}"),
            None => source.to_owned(),
        };
        self.add(key, source).map(Text)
    }

    pub fn holds(&self, t: &Text, ctx: &Value) -> Result<bool, String> {
        let v = self.render(t, ctx)?;
        let v = v.trim().to_ascii_lowercase();
        Ok(!matches!(v.as_str(), "" | "false" | "none" | "0"))
    }

    pub fn render(&self, t: &Text, ctx: &Value) -> Result<String, String> {
        self.env
            .get_template(&t.0)
            .and_then(|t| t.render(ctx))
            .map_err(|e| format!("cannot render a template: {e}"))
    }

    /// A JSON document from its TOML table.
    pub fn json(&mut self, key: &str, doc: &Json) -> Result<Node, ConfigError> {
        Ok(match doc {
            Json::String(s) => match single_expression(s) {
                // Typed: `"{{ amounts.order | number }}"` stays a number.
                Some(expr) => Node::Typed(self.add(
                    key.to_owned(),
                    format!("{{{{ (({expr}) | default(none)) | tojson }}}}"),
                )?),
                None => Node::Text(self.text(key.to_owned(), s)?),
            },
            Json::Array(items) => Node::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.json(&format!("{key}[{i}]"), v))
                    .collect::<Result<_, _>>()?,
            ),
            Json::Object(fields) => Node::Map(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), self.json(&format!("{key}.{k}"), v)?)))
                    .collect::<Result<_, ConfigError>>()?,
            ),
            fixed => Node::Fixed(fixed.clone()),
        })
    }

    /// The document for one event.
    pub fn render_json(&self, node: &Node, ctx: &Value) -> Result<Json, String> {
        Ok(match node {
            Node::Fixed(v) => v.clone(),
            Node::Text(t) => Json::String(self.render(t, ctx)?),
            Node::Typed(name) => {
                let text = self
                    .env
                    .get_template(name)
                    .and_then(|t| t.render(ctx))
                    .map_err(|e| format!("cannot render a template: {e}"))?;
                serde_json::from_str(&text)
                    .map_err(|e| format!("a template gave no JSON value: {e}"))?
            }
            Node::List(items) => Json::Array(
                items
                    .iter()
                    .map(|n| self.render_json(n, ctx))
                    .collect::<Result<_, _>>()?,
            ),
            Node::Map(fields) => {
                let mut out = serde_json::Map::with_capacity(fields.len());
                for (k, n) in fields {
                    let v = self.render_json(n, ctx)?;
                    // A typed value that came out undefined or none is left
                    // out: an API never gets `null` for a field it may reject.
                    if !(v.is_null() && matches!(n, Node::Typed(_))) {
                        out.insert(k.clone(), v);
                    }
                }
                Json::Object(out)
            }
        })
    }

    /// Each value of a table, rendered; empty values left out.
    pub fn render_pairs(
        &self,
        pairs: &[(String, Text)],
        ctx: &Value,
    ) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::with_capacity(pairs.len());
        for (k, t) in pairs {
            let v = self.render(t, ctx)?;
            if !v.is_empty() {
                out.push((k.clone(), v));
            }
        }
        Ok(out)
    }

    /// A table of templates (`query`, `form`, `headers`).
    pub fn pairs(
        &mut self,
        key: &str,
        table: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, Text)>, ConfigError> {
        table
            .iter()
            .map(|(k, v)| Ok((k.clone(), self.text(format!("{key}.{k}"), v)?)))
            .collect()
    }
}

/// A compiled text template.
pub struct Text(String);

/// A JSON document of templates.
pub enum Node {
    Fixed(Json),
    /// Rendered as a string.
    Text(Text),
    /// One `{{ expression }}`: its value keeps its JSON type.
    Typed(String),
    List(Vec<Node>),
    Map(Vec<(String, Node)>),
}

/// `{{ expr }}` alone (and nothing else): the expression.
fn single_expression(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    let plain = !inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%");
    plain.then(|| inner.trim().trim_start_matches('-').trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_body_keeps_types_and_cannot_be_broken_out_of() {
        let mut t = Templates::new();
        let doc: Json = serde_json::json!({
            "title": "Sale: {{ title }}",
            "value": "{{ amount | number }}",
            "raw": "{{ amount }}",
            "missing": "{{ nothing.here }}",
            "fixed": 3,
            "list": ["{{ title }}", true],
        });
        let node = t.json("actions[0].json", &doc).unwrap();
        let title = "\"}, \"admin\": true, {\"x\": \"{{ 7*7 }}";
        let ctx = minijinja::context! { title => title, amount => "37.50" };
        let out = t.render_json(&node, &ctx).unwrap();
        assert_eq!(out["title"], Json::String(format!("Sale: {title}")));
        assert_eq!(out["value"], serde_json::json!(37.5));
        assert_eq!(out["raw"], serde_json::json!("37.50"));
        assert!(out.get("missing").is_none(), "left out");
        assert_eq!(out["fixed"], serde_json::json!(3));
        assert_eq!(out["list"], serde_json::json!([title, true]));
        assert!(out.get("admin").is_none());
    }

    #[test]
    fn template_errors_name_their_key() {
        let mut t = Templates::new();
        let doc = serde_json::json!({"a": {"b": "{{ oops"}});
        let Err(e) = t.json("actions[2].json", &doc) else {
            panic!("accepted a broken template")
        };
        assert!(e.to_string().contains("actions[2].json.a.b"), "{e}");
    }
}
