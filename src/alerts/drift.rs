//! `schema_drift`, pure: the JSON paths of a notification and the kinds of
//! their values (never the values), what an account has learned of them
//! per version and transaction type, and the changes a new notification
//! brings: a new version, a new transaction type, new paths, paths that
//! were in every notification and are missing, and kinds that changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::store::SchemaPath;

/// Members whose keys are chosen by the vendor, not by ClickBank (pay-link
/// variables): a leaf, so a new variable is not a change in the schema.
const OPAQUE: [&str; 1] = ["vendorVariables"];

/// The kinds of a path's values, as bits.
pub type Kinds = u8;
const KIND_NAMES: [(Kinds, &str); 5] = [
    (1, "array"),
    (2, "boolean"),
    (4, "number"),
    (8, "object"),
    (16, "string"),
];

fn kind_of(v: &Value) -> Kinds {
    match v {
        Value::Null => 0,
        Value::Array(_) => 1,
        Value::Bool(_) => 2,
        Value::Number(_) => 4,
        Value::Object(_) => 8,
        Value::String(_) => 16,
    }
}

pub fn kinds_text(k: Kinds) -> String {
    KIND_NAMES
        .iter()
        .filter(|(bit, _)| k & bit != 0)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(",")
}

pub fn parse_kinds(s: &str) -> Kinds {
    s.split(',')
        .filter_map(|name| KIND_NAMES.iter().find(|(_, n)| *n == name).map(|(b, _)| *b))
        .fold(0, |a, b| a | b)
}

/// Every path of a payload (arrays as `[]`), with the kinds seen there.
pub fn paths(payload: &str) -> BTreeMap<String, Kinds> {
    let mut out = BTreeMap::new();
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(payload) {
        for (k, v) in &o {
            walk(k.clone(), v, &mut out);
        }
    }
    out
}

fn walk(path: String, v: &Value, out: &mut BTreeMap<String, Kinds>) {
    *out.entry(path.clone()).or_default() |= kind_of(v);
    if OPAQUE.contains(&path.as_str()) {
        return;
    }
    match v {
        Value::Object(o) => {
            for (k, child) in o {
                walk(format!("{path}.{k}"), child, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(format!("{path}[]"), item, out);
            }
        }
        _ => {}
    }
}

/// One (version, transaction type) of an account: notifications seen, and
/// per path the kinds and the notifications that had it; and what was
/// learned since the last [`Learned::delta`].
#[derive(Debug, Default, Clone)]
struct TypeState {
    seen: i64,
    paths: HashMap<String, (Kinds, i64)>,
    new_seen: i64,
    new_paths: HashMap<String, i64>,
}

impl TypeState {
    fn count(&mut self, paths: &BTreeMap<String, Kinds>) {
        self.seen += 1;
        self.new_seen += 1;
        for (p, &k) in paths {
            match self.paths.get_mut(p) {
                Some(e) => {
                    e.0 |= k;
                    e.1 += 1;
                }
                None => {
                    self.paths.insert(p.clone(), (k, 1));
                }
            }
            match self.new_paths.get_mut(p) {
                Some(n) => *n += 1,
                None => {
                    self.new_paths.insert(p.clone(), 1);
                }
            }
        }
    }
}

/// What one account has learned.
#[derive(Debug, Default, Clone)]
pub struct Learned {
    types: HashMap<(String, String), TypeState>,
}

/// A change a notification brought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    NewVersion {
        version: String,
        known: Vec<String>,
    },
    NewType {
        transaction_type: String,
    },
    NewPaths {
        version: String,
        seen: i64,
        paths: Vec<String>,
    },
    Missing {
        version: String,
        transaction_type: String,
        seen: i64,
        paths: Vec<String>,
    },
    KindChanged {
        version: String,
        /// (path, kinds before, kind now)
        paths: Vec<(String, String, String)>,
    },
}

/// The root's path: a (version, type)'s own notification count is stored
/// as this path's `seen`.
const ROOT: &str = "";

impl Learned {
    /// From the stored rows of one account.
    pub fn from_rows<'a>(rows: impl IntoIterator<Item = &'a SchemaPath>) -> Learned {
        let mut l = Learned::default();
        for r in rows {
            let t = l
                .types
                .entry((r.version.clone(), r.transaction_type.clone()))
                .or_default();
            if r.path == ROOT {
                t.seen = r.seen;
            } else {
                t.paths
                    .insert(r.path.clone(), (parse_kinds(&r.kinds), r.seen));
            }
        }
        l
    }

    fn total(&self) -> i64 {
        self.types.values().map(|t| t.seen).sum()
    }

    /// Learns one notification and says what changed; changes are only
    /// reported once the version (or, for missing paths, the type) has
    /// `baseline` notifications, so the first few teach without firing.
    pub fn learn(
        &mut self,
        version: &str,
        transaction_type: &str,
        paths: &BTreeMap<String, Kinds>,
        baseline: i64,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let versions: BTreeSet<&String> = self
            .types
            .iter()
            .filter(|(_, t)| t.seen > 0)
            .map(|((v, _), _)| v)
            .collect();
        let version_seen: i64 = self
            .types
            .iter()
            .filter(|((v, _), _)| v == version)
            .map(|(_, t)| t.seen)
            .sum();
        if version_seen == 0 && !versions.is_empty() {
            changes.push(Change::NewVersion {
                version: version.to_owned(),
                known: versions.iter().map(|v| v.to_string()).collect(),
            });
        }
        let type_known = self
            .types
            .iter()
            .any(|((_, t), s)| t == transaction_type && s.seen > 0);
        if !type_known && self.total() >= baseline {
            changes.push(Change::NewType {
                transaction_type: transaction_type.to_owned(),
            });
        }
        if version_seen >= baseline {
            // The version's paths over all its types.
            let mut union: HashMap<&str, (Kinds, i64)> = HashMap::new();
            for ((v, _), t) in &self.types {
                if v != version {
                    continue;
                }
                for (p, (k, n)) in &t.paths {
                    let e = union.entry(p.as_str()).or_default();
                    e.0 |= k;
                    e.1 += n;
                }
            }
            let new: Vec<String> = paths
                .keys()
                .filter(|p| !union.contains_key(p.as_str()))
                .cloned()
                .collect();
            if !new.is_empty() {
                changes.push(Change::NewPaths {
                    version: version.to_owned(),
                    seen: version_seen,
                    paths: new,
                });
            }
            let changed: Vec<(String, String, String)> = paths
                .iter()
                .filter_map(|(p, &k)| {
                    let (before, n) = *union.get(p.as_str())?;
                    (k != 0 && before != 0 && k & !before != 0 && n >= baseline)
                        .then(|| (p.clone(), kinds_text(before), kinds_text(k)))
                })
                .collect();
            if !changed.is_empty() {
                changes.push(Change::KindChanged {
                    version: version.to_owned(),
                    paths: changed,
                });
            }
        }
        let key = (version.to_owned(), transaction_type.to_owned());
        let state = self.types.entry(key).or_default();
        if state.seen >= baseline {
            let missing: Vec<String> = state
                .paths
                .iter()
                .filter(|(p, (_, n))| *n == state.seen && !paths.contains_key(*p))
                .map(|(p, _)| p.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if !missing.is_empty() {
                changes.push(Change::Missing {
                    version: version.to_owned(),
                    transaction_type: transaction_type.to_owned(),
                    seen: state.seen,
                    paths: missing,
                });
            }
        }
        state.count(paths);
        changes
    }

    /// Counts a notification whose shape was checked before: such a shape
    /// cannot bring a change again (its paths are known, and a path it
    /// lacks is no longer in every notification).
    pub fn count(
        &mut self,
        version: &str,
        transaction_type: &str,
        paths: &BTreeMap<String, Kinds>,
    ) {
        self.types
            .entry((version.to_owned(), transaction_type.to_owned()))
            .or_default()
            .count(paths);
    }

    /// The rows to add for what was learned since the last call (or
    /// [`Learned::from_rows`]); empties that.
    pub fn delta(&mut self, account: &str) -> Vec<SchemaPath> {
        let mut out = Vec::new();
        for ((version, transaction_type), t) in &mut self.types {
            if t.new_seen == 0 {
                continue;
            }
            let row = |path: &str, kinds: Kinds, seen: i64| SchemaPath {
                account: account.to_owned(),
                version: version.clone(),
                transaction_type: transaction_type.clone(),
                path: path.to_owned(),
                kinds: kinds_text(kinds),
                seen,
            };
            out.push(row(ROOT, 0, t.new_seen));
            for (p, n) in t.new_paths.drain() {
                let kinds = t.paths.get(&p).map_or(0, |(k, _)| *k);
                out.push(row(&p, kinds, n));
            }
            t.new_seen = 0;
        }
        out.sort_by(|a, b| {
            (&a.version, &a.transaction_type, &a.path).cmp(&(
                &b.version,
                &b.transaction_type,
                &b.path,
            ))
        });
        out
    }
}

/// A hash of a notification's shape (version, type, paths and kinds).
pub fn shape(version: &str, transaction_type: &str, paths: &BTreeMap<String, Kinds>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    version.hash(&mut h);
    transaction_type.hash(&mut h);
    paths.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALE: &str = r#"{"version":8.0,"receipt":"A","transactionType":"SALE","lineItems":[{"itemNo":"1","accountAmount":1.00}],"customer":{"billing":{"email":"x@y"}},"vendorVariables":{"v1":"a"}}"#;

    #[test]
    fn paths_name_every_member_with_arrays_as_brackets() {
        let p = paths(SALE);
        let names: Vec<&str> = p.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "customer",
                "customer.billing",
                "customer.billing.email",
                "lineItems",
                "lineItems[]",
                "lineItems[].accountAmount",
                "lineItems[].itemNo",
                "receipt",
                "transactionType",
                "vendorVariables",
                "version"
            ]
        );
        assert_eq!(kinds_text(p["lineItems[].accountAmount"]), "number");
        assert_eq!(parse_kinds("number,string"), 4 | 16);
    }

    #[test]
    fn a_change_is_reported_once_and_only_after_the_baseline() {
        let mut l = Learned::default();
        let base = paths(SALE);
        for _ in 0..3 {
            assert_eq!(l.learn("8.0", "SALE", &base, 3), vec![]);
        }
        let mut extra = base.clone();
        extra.insert("newField".into(), 16);
        let first = l.learn("8.0", "SALE", &extra, 3);
        assert!(
            matches!(&first[..], [Change::NewPaths { paths, seen: 3, .. }] if paths == &["newField"])
        );
        assert_eq!(l.learn("8.0", "SALE", &extra, 3), vec![]);
        // receipt was in every SALE: its absence is reported.
        let mut without = base.clone();
        without.remove("receipt");
        without.insert("newField".into(), 16);
        let missing = l.learn("8.0", "SALE", &without, 3);
        assert!(
            matches!(&missing[..], [Change::Missing { paths, seen: 5, .. }] if paths == &["receipt"])
        );
        // A kind change.
        let mut kind = base.clone();
        kind.insert("receipt".into(), 4);
        kind.insert("newField".into(), 16);
        let changed = l.learn("8.0", "SALE", &kind, 3);
        assert!(
            matches!(&changed[..], [Change::KindChanged { paths, .. }] if paths[0].0 == "receipt")
        );
        // A new version, a new type.
        let v9 = l.learn("9.0", "SALE", &base, 3);
        assert!(matches!(&v9[..], [Change::NewVersion { version, .. }] if version == "9.0"));
        let t = l.learn("8.0", "NEWTYPE", &base, 3);
        assert!(
            matches!(&t[..], [Change::NewType { transaction_type }] if transaction_type == "NEWTYPE")
        );
        // What the store gets back rebuilds the same state.
        let rows = l.delta("acme");
        let again = Learned::from_rows(&rows);
        assert_eq!(again.total(), l.total());
        assert_eq!(l.delta("acme"), vec![], "taken once");
        l.count("8.0", "SALE", &base);
        let more = l.delta("acme");
        assert_eq!(
            more.iter().find(|r| r.path.is_empty()).map(|r| r.seen),
            Some(1)
        );
    }
}
