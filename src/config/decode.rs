//! Decoding: TOML text into the raw structs, which mirror the file as written
//! (`deny_unknown_fields`, every checked value in a [`Spanned`] so that
//! validation can point at it). Decoding errors are located with a key path
//! found from their position; the key at fault is set aside and decoding is
//! retried, so that one typo does not hide the other problems.
//!
//! No rule is checked here beyond TOML syntax, known keys and value types.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Report;

/// At most this many decoding errors are reported before giving up.
const MAX_DECODE_ERRORS: usize = 50;

/// Decodes `report.text`, reporting syntax and decoding errors. `None` when the
/// syntax is broken or the decoding never succeeded.
pub(super) fn decode(report: &mut Report<'_>) -> Option<RawConfig> {
    let (mut doc, mut syntax) = DeTable::parse_recoverable(report.text);
    syntax.sort_by_key(|e| e.span().map_or(0, |s| s.start));
    if !syntax.is_empty() {
        let mut lines_seen = Vec::new();
        for e in syntax {
            // One syntax error often sets off more on its line: keep the first.
            let span = e.span().unwrap_or(0..0);
            let (line, _) = report.line_col(span.start);
            if !lines_seen.contains(&line) {
                lines_seen.push(line);
                let fix = if e.message().contains("quoted") {
                    "put text in quotes, e.g. name = \"public\""
                } else {
                    "correct the TOML syntax here (see config.example.toml)"
                };
                report.error(span, "", e.message().trim(), fix);
            }
        }
        return None;
    }
    for _ in 0..MAX_DECODE_ERRORS {
        match RawConfig::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(raw) => return Some(raw),
            Err(e) => {
                let span = e.span().unwrap_or(0..0);
                let segs = find_path(doc.get_ref(), span.start).unwrap_or_default();
                let msg = e.message().trim();
                let unknown = msg.starts_with("unknown field");
                report.error(span, &render_path(&segs), msg, decode_fix(msg));
                let removed = remove_key(doc.get_mut(), &segs)?;
                report.set_aside.push((removed, unknown));
            }
        }
    }
    None
}

fn decode_fix(message: &str) -> &'static str {
    if message.starts_with("unknown field") {
        "remove it or correct its spelling"
    } else if message.starts_with("invalid type") {
        "check the value's type: text and durations need quotes (\"10s\"), numbers do not"
    } else {
        "see config.example.toml for the expected shape"
    }
}

// ---------------------------------------------------------------------------
// Raw structs: the TOML as written.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) workers: Option<Spanned<i64>>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) listeners: Option<Spanned<Vec<Spanned<RawListener>>>>,
    pub(super) routes: Option<Spanned<Vec<Spanned<RawRoute>>>>,
    pub(super) pools: Option<BTreeMap<String, Spanned<RawPool>>>,
    pub(super) limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) bind: Option<Spanned<String>>,
    pub(super) allow_remote: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListener {
    pub(super) name: Option<Spanned<String>>,
    pub(super) bind: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) listener: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) path_prefix: Option<Spanned<String>>,
    pub(super) pool: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    pub(super) hash_key: Option<Spanned<String>>,
    pub(super) fallback_key: Option<Spanned<String>>,
    pub(super) backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    pub(super) bounded_load: Option<Spanned<f64>>,
    pub(super) max_fails: Option<Spanned<i64>>,
    pub(super) fail_timeout: Option<Spanned<String>>,
    pub(super) rehome: Option<Spanned<bool>>,
    pub(super) drain: Option<Spanned<RawDrain>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) spread: Option<Spanned<String>>,
    pub(super) close_code: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_connections: Option<Spanned<i64>>,
    pub(super) handshake_timeout: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) max_header_bytes: Option<Spanned<i64>>,
    pub(super) connect_timeout: Option<Spanned<String>>,
    pub(super) response_timeout: Option<Spanned<String>>,
    pub(super) splice: Option<Spanned<bool>>,
}

/// A backend: `"host:port"` or `{ addr = "host:port", weight = N }`. Written by
/// hand rather than `#[serde(untagged)]`, which loses spans and gives vague errors.
pub(super) enum RawBackend {
    Plain(String),
    Table { addr: Option<Spanned<String>>, weight: Option<Spanned<i64>> },
}

impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawBackend;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a "host:port" string or { addr = "host:port", weight = N }"#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawBackend, E> {
                Ok(RawBackend::Plain(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<RawBackend, A::Error> {
                let (mut addr, mut weight) = (None, None);
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "addr" => addr = Some(m.next_value()?),
                        "weight" => weight = Some(m.next_value()?),
                        _ => return Err(serde::de::Error::unknown_field(&k, &["addr", "weight"])),
                    }
                }
                Ok(RawBackend::Table { addr, weight })
            }
        }
        d.deserialize_any(Visit)
    }
}

// ---------------------------------------------------------------------------
// Key paths, found from an error's position.

#[derive(Debug, Clone)]
enum Seg {
    Key(String),
    Index(usize),
}

/// The path of the key (or value) at byte `pos`: the deepest one containing it.
fn find_path(table: &DeTable<'_>, pos: usize) -> Option<Vec<Seg>> {
    for (k, v) in table.iter() {
        let here = Seg::Key(k.get_ref().to_string());
        if k.span().contains(&pos) {
            return Some(vec![here]);
        }
        if let Some(mut rest) = find_in_value(v, pos) {
            rest.insert(0, here);
            return Some(rest);
        }
    }
    None
}

fn find_in_value(v: &Spanned<DeValue<'_>>, pos: usize) -> Option<Vec<Seg>> {
    let inner = match v.get_ref() {
        DeValue::Table(t) => find_path(t, pos),
        DeValue::Array(a) => a.iter().enumerate().find_map(|(i, e)| {
            let mut rest = find_in_value(e, pos)?;
            rest.insert(0, Seg::Index(i));
            Some(rest)
        }),
        _ => None,
    };
    // Spans of `[table]` values cover their header, so this also catches
    // errors about a whole table.
    inner.or_else(|| (v.span().contains(&pos) || v.span().start == pos).then(Vec::new))
}

fn render_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) if out.is_empty() => out.push_str(&key_segment(k)),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(&key_segment(k));
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A key as written in a path: bare when it can be, quoted otherwise.
pub(super) fn key_segment(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

/// Removes the innermost table key on `segs` (so that decoding can be retried),
/// returning its rendered path.
fn remove_key(table: &mut DeTable<'_>, segs: &[Seg]) -> Option<String> {
    let last_key = segs.iter().rposition(|s| matches!(s, Seg::Key(_)))?;
    let mut t = table;
    for (i, seg) in segs[..last_key].iter().enumerate() {
        let Seg::Key(k) = seg else { continue };
        let mut v = t.get_mut(k.as_str())?.get_mut();
        let indexes = segs[i + 1..last_key].iter().map_while(|s| match s {
            Seg::Index(n) => Some(*n),
            Seg::Key(_) => None,
        });
        for n in indexes {
            let DeValue::Array(a) = v else { return None };
            v = a.get_mut(n)?.get_mut();
        }
        let DeValue::Table(next) = v else { return None };
        t = next;
    }
    let Seg::Key(k) = &segs[last_key] else {
        return None;
    };
    t.remove(k.as_str())?;
    Some(render_path(&segs[..=last_key]))
}
