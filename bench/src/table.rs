//! Prints the results table from JSON-lines files written by `run.sh`.
//!
//! One row per scenario and metric; per proxy the median over rounds with the
//! min–max; last, tidegate's median divided by the best peer's median (peers are
//! every proxy except `direct` and tidegate's own variants such as
//! `tidegate-splice`; "best" follows the metric's
//! direction, ↑ higher is better, ↓ lower is better).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::report::{Better, Record};

const SCENARIO_ORDER: &[&str] = &["http", "http_big", "latency", "throughput", "handshakes", "idle", "sticky"];
const PROXY_ORDER: &[&str] = &["direct", "tidegate", "tidegate-splice", "haproxy", "nginx"];

struct Row {
    scenario: String,
    metric: String,
    unit: String,
    better: Better,
    values: BTreeMap<String, Vec<f64>>,
}

pub fn print(files: &[PathBuf]) -> Result<()> {
    let mut records = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let rec: Record = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a result record", file.display(), i + 1))?;
            records.push(rec);
        }
    }
    print!("{}", render(&records));
    Ok(())
}

fn group(row: &Row) -> u8 {
    let failures = ["errors", "failed", "lost", "send_errors"];
    if failures.iter().any(|f| row.metric.starts_with(f)) {
        2
    } else if row.better == Better::None {
        1
    } else {
        0
    }
}

fn rank(order: &[&str], name: &str) -> usize {
    order.iter().position(|&s| s == name).unwrap_or(order.len())
}

pub fn render(records: &[Record]) -> String {
    let mut proxies: Vec<String> = Vec::new();
    let mut rows: Vec<Row> = Vec::new();
    let mut bg: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut errors = Vec::new();
    for rec in records {
        if !proxies.contains(&rec.proxy) {
            proxies.push(rec.proxy.clone());
        }
        if let Some(e) = &rec.error {
            errors.push(format!("  round {} {} {}: {e}", rec.round, rec.scenario, rec.proxy));
            continue;
        }
        let background = rec.info.iter().filter(|(k, _)| k.starts_with("bg_cpu0_pct"));
        bg.entry(rec.proxy.clone()).or_default().extend(background.map(|(_, v)| *v));
        for m in &rec.metrics {
            let pos = rows.iter().position(|r| r.scenario == rec.scenario && r.metric == m.name);
            let row = match pos {
                Some(i) => &mut rows[i],
                None => {
                    rows.push(Row {
                        scenario: rec.scenario.clone(),
                        metric: m.name.clone(),
                        unit: m.unit.clone(),
                        better: m.better,
                        values: BTreeMap::new(),
                    });
                    rows.last_mut().expect("just pushed")
                }
            };
            row.values.entry(rec.proxy.clone()).or_default().push(m.value);
        }
    }
    proxies.sort_by_key(|p| rank(PROXY_ORDER, p));
    // Stable: within a scenario, figures first, then informational rows, then
    // failure counts, each in the order they were reported.
    rows.sort_by_key(|r| (rank(SCENARIO_ORDER, &r.scenario), group(r)));

    let with_ratio = proxies.iter().any(|p| p == "tidegate");
    let mut header = vec!["scenario".to_owned(), "metric".to_owned()];
    header.extend(proxies.iter().cloned());
    if with_ratio {
        header.push("tidegate/best peer".to_owned());
    }
    let mut table = vec![header];
    for row in &rows {
        let arrow = match row.better {
            Better::Higher => " ↑",
            Better::Lower => " ↓",
            Better::None => "",
        };
        let unit = if row.unit.is_empty() { String::new() } else { format!(" ({})", row.unit) };
        let mut line = vec![row.scenario.clone(), format!("{}{unit}{arrow}", row.metric)];
        for p in &proxies {
            line.push(row.values.get(p).map_or("-".to_owned(), |v| cell(v)));
        }
        if with_ratio {
            line.push(ratio(row));
        }
        table.push(line);
    }

    let mut out = layout(&table);
    bg.retain(|_, v| !v.is_empty());
    if !bg.is_empty() {
        out.push_str("\nbackground CPU on core 0 (busy minus the proxy), median %: ");
        let parts: Vec<String> =
            proxies.iter().filter_map(|p| bg.get(p).map(|v| format!("{p} {:.0}", stats(v).0))).collect();
        out.push_str(&parts.join(", "));
        out.push('\n');
    }
    if !errors.is_empty() {
        out.push_str(&format!("\n{} failed run(s):\n", errors.len()));
        for e in errors {
            out.push_str(&e);
            out.push('\n');
        }
    }
    out
}

/// Median, min, max.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    (median, s[0], s[n - 1])
}

fn cell(v: &[f64]) -> String {
    let (median, min, max) = stats(v);
    if v.len() == 1 || min == max { fmt(median) } else { format!("{} ({}–{})", fmt(median), fmt(min), fmt(max)) }
}

fn ratio(row: &Row) -> String {
    let Some(t) = row.values.get("tidegate").map(|v| stats(v).0) else {
        return String::new();
    };
    let peers =
        row.values.iter().filter(|(p, _)| *p != "direct" && !p.starts_with("tidegate")).map(|(_, v)| stats(v).0);
    let best = match row.better {
        Better::Higher => peers.fold(f64::NAN, f64::max),
        Better::Lower => peers.fold(f64::NAN, f64::min),
        Better::None => return String::new(),
    };
    if best.is_nan() || best == 0.0 { String::new() } else { format!("{:.2}×", t / best) }
}

/// A number in a short human form: 87.3k, 2167, 74.0, 0.85.
pub fn fmt(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn layout(table: &[Vec<String>]) -> String {
    let cols = table.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|c| table.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in table.iter().enumerate() {
        let cells: Vec<String> =
            row.iter().enumerate().map(|(c, s)| format!("{s}{}", " ".repeat(width[c] - s.chars().count()))).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Metric;

    fn rec(proxy: &str, value: f64) -> Record {
        Record {
            ts: 0,
            round: 1,
            proxy: proxy.to_owned(),
            scenario: "http".to_owned(),
            metrics: vec![Metric::higher("req_s", value, "req/s")],
            info: BTreeMap::new(),
            error: None,
        }
    }

    #[test]
    fn medians_ranges_and_ratio_to_the_best_peer() {
        let recs = vec![
            rec("haproxy", 100.0),
            rec("tidegate", 120.0),
            rec("nginx", 90.0),
            rec("haproxy", 110.0),
            rec("tidegate", 130.0),
            rec("haproxy", 300.0),
            // tidegate's own variants are not peers.
            rec("tidegate-splice", 500.0),
        ];
        let out = render(&recs);
        assert!(out.contains("110 (100–300)"), "{out}");
        assert!(out.contains("125 (120–130)"), "{out}");
        assert!(out.contains("1.14×"), "{out}");
    }
}
