//! The query parameters the pages and the API share: the account and the
//! range of UTC days, checked once into a [`Scope`], with errors a person
//! can act on (answered 400, or 404 for an unknown account).

use chrono::{Duration, NaiveDate, Utc};
use serde::Deserialize;

use crate::report::query::Scope;

/// The longest range a view takes (a chart point per day).
const MAX_DAYS: i64 = 366 * 20;

/// `?account=&from=YYYY-MM-DD&to=YYYY-MM-DD&range=today|7d|30d|90d`. Empty
/// values are absent; `from`/`to` win over `range`; the default is 30 days
/// ending today.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ScopeParams {
    pub account: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub range: Option<String>,
}

/// Why a request's parameters are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    Bad(String),
    UnknownAccount(String),
}

fn present(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn date(name: &str, s: &str) -> Result<NaiveDate, ParamError> {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
        ParamError::Bad(format!(
            "{name}={s:?} is not a date: use YYYY-MM-DD (UTC), e.g. 2026-11-30"
        ))
    })
}

impl ScopeParams {
    /// The scope, given the accounts that exist.
    pub fn scope(&self, accounts: &[String]) -> Result<Scope, ParamError> {
        let today = Utc::now().date_naive();
        let account = present(&self.account).map(str::to_owned);
        if let Some(a) = &account {
            if !accounts.contains(a) {
                return Err(ParamError::UnknownAccount(a.clone()));
            }
        }
        let days = match present(&self.range) {
            None | Some("30d") => 30,
            Some("today") => 1,
            Some("7d") => 7,
            Some("90d") => 90,
            Some("365d") => 365,
            Some(other) => {
                return Err(ParamError::Bad(format!(
                    "range={other:?} is not one of today, 7d, 30d, 90d, 365d (or give from and to)"
                )))
            }
        };
        let to = present(&self.to)
            .map(|s| date("to", s))
            .transpose()?
            .unwrap_or(today);
        let from = match present(&self.from) {
            Some(s) => date("from", s)?,
            None => to - Duration::days(days - 1),
        };
        if from > to {
            return Err(ParamError::Bad(format!("from {from} is after to {to}")));
        }
        if (to - from).num_days() >= MAX_DAYS {
            return Err(ParamError::Bad(format!(
                "the range {from} to {to} is longer than {MAX_DAYS} days"
            )));
        }
        Ok(Scope { account, from, to })
    }

    /// The query string that reproduces this scope (for links).
    pub fn query(&self) -> String {
        let mut out = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("account", &self.account),
            ("from", &self.from),
            ("to", &self.to),
            ("range", &self.range),
        ] {
            if let Some(v) = present(v) {
                out.append_pair(k, v);
            }
        }
        out.finish()
    }
}

/// Every parameter a view takes, from the raw query string (repeated `v`
/// for the compare view).
#[derive(Debug, Clone, Default)]
pub struct ViewParams {
    pub scope: ScopeParams,
    /// `csv` for a CSV export; JSON otherwise.
    pub format: Option<String>,
    /// The breakdown (`tid`, `trafficSource`…).
    pub by: Option<String>,
    pub sort: Option<String>,
    /// `asc` or `desc`.
    pub dir: Option<String>,
    /// The values compared.
    pub values: Vec<String>,
    /// Notification list filters.
    pub receipt: Option<String>,
    pub kind: Option<String>,
    pub dim: Option<String>,
    pub value: Option<String>,
    pub before: Option<String>,
}

impl ViewParams {
    pub fn parse(query: Option<&str>) -> ViewParams {
        let mut p = ViewParams::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let v = v.into_owned();
            let slot = match &*k {
                "account" => &mut p.scope.account,
                "from" => &mut p.scope.from,
                "to" => &mut p.scope.to,
                "range" => &mut p.scope.range,
                "format" => &mut p.format,
                "by" => &mut p.by,
                "sort" => &mut p.sort,
                "dir" => &mut p.dir,
                "receipt" => &mut p.receipt,
                "type" => &mut p.kind,
                "dim" => &mut p.dim,
                "value" => &mut p.value,
                "before" => &mut p.before,
                "v" => {
                    if !v.trim().is_empty() && !p.values.contains(&v) {
                        p.values.push(v);
                    }
                    continue;
                }
                _ => continue,
            };
            *slot = Some(v);
        }
        p
    }

    pub fn csv(&self) -> bool {
        self.format.as_deref() == Some("csv")
    }

    pub fn descending(&self) -> bool {
        self.dir.as_deref() != Some("asc")
    }

    /// A non-empty trimmed value.
    pub fn get<'a>(&self, v: &'a Option<String>) -> Option<&'a str> {
        present(v)
    }
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(from: &str, to: &str) -> ScopeParams {
        ScopeParams {
            from: Some(from.into()),
            to: Some(to.into()),
            ..Default::default()
        }
    }

    #[test]
    fn ranges() {
        let s = p("2016-01-01", "2025-12-31").scope(&[]).unwrap();
        assert_eq!((s.to - s.from).num_days(), 3652);
        assert!(
            matches!(p("2026-13-01", "2026-12-01").scope(&[]), Err(ParamError::Bad(m)) if m.contains("YYYY-MM-DD"))
        );
        assert!(matches!(
            p("2026-12-02", "2026-12-01").scope(&[]),
            Err(ParamError::Bad(_))
        ));
        let unknown = ScopeParams {
            account: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            unknown.scope(&["a".into()]),
            Err(ParamError::UnknownAccount("x".into()))
        );
        let today = ScopeParams {
            range: Some("today".into()),
            ..Default::default()
        }
        .scope(&[])
        .unwrap();
        assert_eq!(today.from, today.to);
    }
}
