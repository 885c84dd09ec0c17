//! Statistics (percentiles) and the markdown report.

use super::*;

#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) min: f64,
    pub(crate) p50: f64,
    pub(crate) p90: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
}

/// Nearest-rank percentile of sorted values.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn summarize(v: &[f64]) -> Summary {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return Summary::default();
    }
    Summary {
        n: s.len(),
        min: s[0],
        p50: pct(&s, 50.0),
        p90: pct(&s, 90.0),
        p99: pct(&s, 99.0),
        max: s[s.len() - 1],
        mean: s.iter().sum::<f64>() / s.len() as f64,
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn f(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// `p50 / p90 / p99 / min / max` cells.
pub(crate) fn cells(s: &Summary) -> Vec<String> {
    vec![
        s.n.to_string(),
        f(s.p50),
        f(s.p90),
        f(s.p99),
        f(s.min),
        f(s.max),
    ]
}
pub(crate) const CELL_HEAD: [&str; 6] = ["n", "p50 ms", "p90 ms", "p99 ms", "min ms", "max ms"];

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) md: String,
    /// Sequential `docker run` latencies per series, for latency.svg.
    pub(crate) docker_series: Vec<(String, Vec<f64>)>,
    /// Per-container setup latencies per series, for plugin-latency.svg.
    pub(crate) plugin_series: Vec<(String, Vec<f64>)>,
}

impl Report {
    pub(crate) fn h(&mut self, level: usize, title: &str) {
        let _ = writeln!(self.md, "\n{} {title}\n", "#".repeat(level));
        println!("\n{} {title}\n", "#".repeat(level));
    }
    pub(crate) fn p(&mut self, text: &str) {
        let _ = writeln!(self.md, "{text}\n");
        println!("{text}\n");
    }
    pub(crate) fn table(&mut self, head: &[&str], rows: &[Vec<String>]) {
        let mut t = String::new();
        let _ = writeln!(t, "| {} |", head.join(" | "));
        let _ = writeln!(
            t,
            "|{}|",
            head.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        );
        for r in rows {
            let _ = writeln!(t, "| {} |", r.join(" | "));
        }
        let _ = writeln!(self.md, "{t}");
        println!("{t}");
    }
}

pub(crate) fn goal(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
}
