//! Reading a process's CPU time and resident memory, and each core's busy time,
//! from `/proc` (Linux only).

use std::time::Instant;

use anyhow::{Context, Result, bail};

/// Kernel clock ticks per second (the unit of utime/stime in `/proc/PID/stat`).
fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The fields of `/proc/PID/stat` after the command name, which may hold spaces.
fn stat_fields(pid: u32) -> Result<Vec<String>> {
    let s =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let close = s.rfind(')').context("malformed /proc/PID/stat")?;
    Ok(s[close + 1..].split_whitespace().map(str::to_owned).collect())
}

/// utime + stime of one process, all threads, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let f = stat_fields(pid)?;
    // Field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    if f.len() < 13 {
        bail!("short /proc/{pid}/stat");
    }
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid).ok()?.get(1)?.parse().ok()
}

/// Resident set size of one process in bytes (`VmRSS` of `/proc/PID/status`).
fn rss_bytes(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS in /proc/PID/status")?;
    let kib: u64 = line.split_whitespace().nth(1).context("malformed VmRSS")?.parse()?;
    Ok(kib * 1024)
}

/// A proxy: its main process and its direct children (nginx's workers).
#[derive(Clone, Debug)]
pub struct ProcSet {
    pub pids: Vec<u32>,
}

impl ProcSet {
    pub fn of(pid: u32) -> Self {
        let mut pids = vec![pid];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                if child != pid && parent_of(child) == Some(pid) {
                    pids.push(child);
                }
            }
        }
        ProcSet { pids }
    }

    /// Total CPU seconds (user + system) used so far by the set.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let mut ticks = 0;
        for &pid in &self.pids {
            ticks += cpu_ticks(pid)?;
        }
        Ok(ticks as f64 / clock_ticks_per_s())
    }

    /// Total resident memory of the set, in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for &pid in &self.pids {
            total += rss_bytes(pid)?;
        }
        Ok(total)
    }
}

/// Busy and total jiffies of each core, from `/proc/stat`.
fn core_times() -> Vec<(u64, u64)> {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    s.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            // user nice system idle iowait irq softirq steal (guest is inside user)
            let get = |i: usize| v.get(i).copied().unwrap_or(0);
            let idle = get(3) + get(4);
            let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
            (busy, busy + idle)
        })
        .collect()
}

/// What a measurement window cost: wall time, the proxy's CPU, each core's load.
#[derive(Clone, Debug)]
pub struct Usage {
    pub wall_s: f64,
    /// CPU seconds the proxy used in the window (None for "direct").
    pub proxy_cpu_s: Option<f64>,
    /// Busy percentage of each core over the window.
    pub core_busy_pct: Vec<f64>,
}

impl Usage {
    /// Percentage of core 0 busy with something other than the proxy.
    pub fn background_cpu0_pct(&self) -> Option<f64> {
        let busy = *self.core_busy_pct.first()?;
        let proxy = self.proxy_cpu_s.unwrap_or(0.0) / self.wall_s * 100.0;
        Some((busy - proxy).max(0.0))
    }
}

/// Started at the beginning of a measurement window, finished at its end.
pub struct Watch {
    procs: Option<ProcSet>,
    cpu0: Option<f64>,
    cores0: Vec<(u64, u64)>,
    t0: Instant,
}

impl Watch {
    pub fn start(procs: Option<&ProcSet>) -> Self {
        let procs = procs.cloned();
        let cpu0 = procs.as_ref().and_then(|p| p.cpu_seconds().ok());
        Watch { procs, cpu0, cores0: core_times(), t0: Instant::now() }
    }

    pub fn finish(self) -> Usage {
        let wall_s = self.t0.elapsed().as_secs_f64();
        let cpu1 = self.procs.as_ref().and_then(|p| p.cpu_seconds().ok());
        let proxy_cpu_s = match (self.cpu0, cpu1) {
            (Some(a), Some(b)) => Some(b - a),
            _ => None,
        };
        let core_busy_pct = core_times()
            .iter()
            .zip(&self.cores0)
            .map(|(&(b1, t1), &(b0, t0))| {
                let dt = t1.saturating_sub(t0);
                if dt == 0 { 0.0 } else { b1.saturating_sub(b0) as f64 * 100.0 / dt as f64 }
            })
            .collect();
        Usage { wall_s, proxy_cpu_s, core_busy_pct }
    }
}
