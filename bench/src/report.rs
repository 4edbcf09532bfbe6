//! The records the load generator prints (one JSON line per scenario run).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::procstat::Usage;

/// Which way a metric improves (decides "best peer" in the table).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
    /// Informational: no best, no ratio.
    None,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub better: Better,
}

impl Metric {
    pub fn new(name: impl Into<String>, value: f64, unit: &str, better: Better) -> Self {
        Metric { name: name.into(), value, unit: unit.to_owned(), better }
    }
    pub fn higher(name: impl Into<String>, value: f64, unit: &str) -> Self {
        Self::new(name, value, unit, Better::Higher)
    }
    pub fn lower(name: impl Into<String>, value: f64, unit: &str) -> Self {
        Self::new(name, value, unit, Better::Lower)
    }
    pub fn info(name: impl Into<String>, value: f64, unit: &str) -> Self {
        Self::new(name, value, unit, Better::None)
    }
}

/// One scenario run against one proxy in one round.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Record {
    /// Unix time in seconds when the run ended.
    pub ts: u64,
    pub round: u32,
    pub proxy: String,
    pub scenario: String,
    #[serde(default)]
    pub metrics: Vec<Metric>,
    /// Harness health: core load, background CPU, send lag, parameters.
    #[serde(default)]
    pub info: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a scenario returns to `main`, which wraps it into a [`Record`].
#[derive(Default)]
pub struct Outcome {
    pub metrics: Vec<Metric>,
    pub info: BTreeMap<String, f64>,
}

impl Outcome {
    /// Records the load of a measurement window; `suffix` tells parts apart.
    pub fn add_usage(&mut self, usage: &Usage, suffix: &str) {
        self.info.insert(format!("wall_s{suffix}"), usage.wall_s);
        for (i, busy) in usage.core_busy_pct.iter().enumerate() {
            self.info.insert(format!("cpu{i}_busy_pct{suffix}"), *busy);
        }
        if let Some(bg) = usage.background_cpu0_pct() {
            self.info.insert(format!("bg_cpu0_pct{suffix}"), bg);
        }
        if let Some(cpu) = usage.proxy_cpu_s {
            self.info.insert(format!("proxy_cpu_s{suffix}"), cpu);
            self.metrics.push(Metric::info(format!("proxy_cpu_pct{suffix}"), cpu / usage.wall_s * 100.0, "%"));
        }
    }
}
