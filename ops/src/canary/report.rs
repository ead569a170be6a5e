//! The canary's report: everything a verdict rests on as one serialisable [`Report`] (what
//! `pipeline canary --json` prints), and its rendering as one self-contained HTML page with
//! inline SVG charts drawn here (no scripts, no external assets). Pure: no I/O.

use pipeline_analysis::judge::{Direction, MetricKind, MetricStatus, Outcome, TestUsed, Verdict};
use pipeline_analysis::MetricEvidence;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ArmPair<T> {
    pub baseline: T,
    pub candidate: T,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `service.NAME` in the user's stack.
    pub service: String,
    /// Revisions.
    pub baseline: String,
    pub candidate: String,
    pub request: RequestInfo,
    pub load: LoadInfo,
    pub early_stop: Option<EarlyStop>,
    /// The judge's confidence (1 − α) and score thresholds.
    pub confidence: f64,
    pub pass_threshold: f64,
    pub marginal_threshold: f64,
    pub verdict: Verdict,
    /// Per metric, the evidence behind its verdict (same order as `verdict.per_metric`).
    pub evidence: Vec<Evidence>,
    /// The sequential judge's evidence at its last look (always-valid bounds and p-values).
    pub sequential: Vec<MetricEvidence>,
    pub series: Series,
    /// The progressive canary of `pipeline apply` (absent for `pipeline canary`): no CPU or
    /// memory samples, and the candidate's traffic share step by step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progressive: Option<ProgressiveInfo>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgressiveInfo {
    /// `promoted`, or `aborted at N%: reason`.
    pub result: String,
    /// Each step's start (seconds) and the candidate's share of the traffic (percent); the last
    /// is the end: 100 when promoted, 0 when aborted.
    pub steps: Vec<(f64, u32)>,
    /// Answers not kept (the record was full): the charts and statistics cover the others.
    pub dropped_answers: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct RequestInfo {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub body_bytes: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadInfo {
    /// Requests a second through the balancer, and how long they were to be sent.
    pub rate: u32,
    pub duration_s: f64,
    /// How long load actually ran.
    pub ran_s: f64,
    pub replicas: u32,
    /// The client's view: requests sent, answered 2xx, and everything else.
    pub sent: u64,
    pub ok_2xx: u64,
    pub other: u64,
    /// Answers per arm in the balancer's access log.
    pub answers: ArmPair<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EarlyStop {
    pub after_s: f64,
    /// The metric that regressed; empty when the canary passed early.
    pub metric: String,
    pub passed: bool,
}

/// A test statistic: `U` (Mann-Whitney, of the candidate) or `z` (two proportions).
#[derive(Clone, Debug, Serialize)]
pub struct Statistic {
    pub name: String,
    pub value: f64,
    /// The normal approximation's z, for U.
    pub z: Option<f64>,
}

/// A confidence interval on the effect's scale (shift in the metric's unit, or rate difference).
#[derive(Clone, Debug, Serialize)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
    pub level: f64,
    pub method: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    pub name: String,
    /// Unit of the samples (`ms`, `%` of a core, `MiB`), or `rate` for proportions.
    pub unit: String,
    pub kind: MetricKind,
    pub direction: Direction,
    pub critical: bool,
    pub weight: f64,
    pub test: TestUsed,
    /// Samples (continuous) or observations (proportions) per arm.
    pub n: ArmPair<u64>,
    pub summary: ArmPair<String>,
    pub statistic: Option<Statistic>,
    pub p_value: Option<f64>,
    /// The significance level the p-value is compared with.
    pub alpha: f64,
    /// Hodges–Lehmann shift (candidate − baseline) or rate difference, and relative to the
    /// baseline median or rate.
    pub effect: Option<f64>,
    pub relative: Option<f64>,
    pub interval: Option<Interval>,
    pub tolerance: f64,
    pub abs_tolerance: f64,
    pub status: MetricStatus,
    pub reason: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    /// Width of the latency/error windows, seconds.
    pub window_s: f64,
    pub windows: Vec<Window>,
    pub usage: Vec<UsageSample>,
    pub looks: Vec<Look>,
    /// Latency ECDF per arm: (ms, fraction of answers at or below), at most a few hundred points.
    pub latency_ecdf: ArmPair<Vec<[f64; 2]>>,
}

/// Answers that finished in `(t − window_s, t]` seconds after load started.
#[derive(Clone, Debug, Serialize)]
pub struct Window {
    pub t: f64,
    pub baseline: ArmWindow,
    pub candidate: ArmWindow,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ArmWindow {
    pub answers: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// CPU and memory of one arm at one sample.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ArmUsage {
    /// CPU over the interval since the previous sample, % of one core (None at the first).
    pub cpu_pct: Option<f64>,
    /// Resident memory, MiB (None when no process of the arm was found).
    pub rss_mib: Option<f64>,
    /// Processes counted.
    pub processes: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct UsageSample {
    pub t: f64,
    pub baseline: ArmUsage,
    pub candidate: ArmUsage,
}

/// One look of the live canary (every 0.5 s): the fixed judge on the data so far, and the
/// sequential judge's decision and evidence.
#[derive(Clone, Debug, Serialize)]
pub struct Look {
    pub t: f64,
    pub score: f64,
    pub outcome: Outcome,
    /// `continue`, `pass` or `fail: METRIC`.
    pub decision: String,
    pub evidence: Vec<MetricEvidence>,
}

// ------------------------------------------------------------------------------------------
// HTML

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const BASELINE: &str = "#2563eb";
const CANDIDATE: &str = "#ea580c";
const NEUTRAL: &str = "#7c3aed";

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Pass => "pass",
        Outcome::Marginal => "marginal",
        Outcome::Fail => "fail",
        Outcome::Inconclusive => "inconclusive",
    }
}

fn status_word(s: MetricStatus) -> &'static str {
    match s {
        MetricStatus::Pass => "pass",
        MetricStatus::Fail => "fail",
        MetricStatus::HighButWithinTolerance => "high, within tolerance",
        MetricStatus::NotEnoughData => "not enough data",
    }
}

fn test_word(t: TestUsed) -> &'static str {
    match t {
        TestUsed::MannWhitney => "Mann-Whitney U",
        TestUsed::WilcoxonSignedRank => "Wilcoxon signed-rank",
        TestUsed::TwoProportionZ => "two-proportion z",
        TestUsed::FisherExact => "Fisher exact",
        TestUsed::None => "–",
    }
}

/// A number for people: a few significant digits, `–` when missing.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "–".into()
        } else if x > 0.0 {
            "∞".into()
        } else {
            "−∞".into()
        };
    }
    let a = x.abs();
    let s = if a == 0.0 {
        "0".to_string()
    } else if a >= 1000.0 || (a >= 1.0 && (x - x.round()).abs() < 1e-9) {
        format!("{x:.0}")
    } else if a >= 0.01 {
        let s = if a >= 100.0 {
            format!("{x:.1}")
        } else if a >= 1.0 {
            format!("{x:.2}")
        } else {
            format!("{x:.3}")
        };
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{x:.2e}")
    };
    s.replace('-', "−")
}

fn signed(x: f64) -> String {
    if x.is_finite() && x >= 0.0 {
        format!("+{}", num(x))
    } else {
        num(x)
    }
}

fn p_value(p: f64) -> String {
    if !p.is_finite() {
        "–".into()
    } else if p < 0.001 {
        format!("{p:.2e}").replace('-', "−")
    } else {
        format!("{p:.3}")
    }
}

/// An effect in its unit: `+1.20 ms`, `+0.80 pp` (percentage points) for rates.
fn in_unit(x: f64, unit: &str) -> String {
    match unit {
        "rate" => format!("{} pp", signed(100.0 * x)),
        "%" => format!("{} pp of a core", signed(x)),
        u => format!("{} {u}", signed(x)),
    }
}

pub fn render_html(r: &Report) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let outcome = outcome_word(r.verdict.outcome);
    let title = if r.progressive.is_some() {
        format!(
            "Progressive canary of {} — {}",
            r.service,
            outcome.to_uppercase()
        )
    } else {
        format!(
            "Canary of {}: {} vs {} — {}",
            r.service,
            r.baseline,
            r.candidate,
            outcome.to_uppercase()
        )
    };
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>{}</style>\n</head>\n<body>\n",
        esc(&title),
        CSS
    );
    // Header: verdict, revisions, load.
    let _ = write!(
        h,
        "<header>\n<h1>{} of <code>{}</code></h1>\n<p class=\"revs\">baseline <code class=\"base\">{}</code> vs candidate <code class=\"cand\">{}</code></p>\n",
        if r.progressive.is_some() {
            "Progressive canary"
        } else {
            "Canary"
        },
        esc(&r.service),
        esc(&r.baseline),
        esc(&r.candidate)
    );
    let _ = write!(
        h,
        "<div id=\"verdict\" class=\"verdict {o}\" data-outcome=\"{o}\"><span class=\"word\">{}</span> <span class=\"score\">score {} (pass ≥ {}, marginal ≥ {})</span></div>\n<p class=\"reason\">{}</p>\n",
        esc(&outcome.to_uppercase()),
        esc(&num(r.verdict.score)),
        esc(&num(r.pass_threshold)),
        esc(&num(r.marginal_threshold)),
        esc(&r.verdict.reason),
        o = esc(outcome),
    );
    if let Some(e) = r.early_stop.as_ref().filter(|e| e.passed) {
        let _ = writeln!(
            h,
            "<p class=\"early\">Stopped early after {} s of traffic: every metric is within its tolerance (sequential test).</p>",
            esc(&num(e.after_s))
        );
    } else if let Some(e) = &r.early_stop {
        let _ = writeln!(
            h,
            "<p class=\"early\">Stopped early after {} s of traffic: <code>{}</code> regressed beyond doubt (sequential test).</p>",
            esc(&num(e.after_s)),
            esc(&e.metric)
        );
    }
    let l = &r.load;
    let body = match &r.request.content_type {
        Some(ct) => format!("{} bytes of {ct}", r.request.body_bytes),
        None => "no body".into(),
    };
    let mut facts: Vec<(&str, String)> = vec![
        (
            "request",
            format!("{} {} ({body})", r.request.method, r.request.path),
        ),
        (
            "load",
            format!(
                "{} req/s through the balancer for {} s (asked {} s), {} replica(s) per arm",
                l.rate,
                num(l.ran_s),
                num(l.duration_s),
                l.replicas
            ),
        ),
        (
            "client",
            format!(
                "{} requests sent, {} answered 2xx, {} not",
                l.sent, l.ok_2xx, l.other
            ),
        ),
        (
            "answers per arm",
            format!(
                "baseline {}, candidate {}",
                l.answers.baseline, l.answers.candidate
            ),
        ),
        (
            "judge",
            format!(
                "confidence {} (α = {}), {} looks of the sequential test",
                num(r.confidence),
                num(1.0 - r.confidence),
                r.series.looks.len()
            ),
        ),
    ];
    if let Some(p) = &r.progressive {
        facts[1].1 = if l.rate > 0 {
            format!(
                "{} synthetic req/s through the balancer (canary.load), with whatever real traffic came, for {} s",
                l.rate,
                num(l.ran_s)
            )
        } else {
            format!("real traffic only (no canary.load), for {} s", num(l.ran_s))
        };
        if l.rate == 0 {
            facts.remove(2);
        }
        let steps: Vec<String> = p.steps.iter().map(|s| format!("{} %", s.1)).collect();
        facts.insert(0, ("result", p.result.clone()));
        facts.push(("traffic share", steps.join(" → ")));
        if p.dropped_answers > 0 {
            facts.push((
                "not kept",
                format!(
                    "{} answers came after the record was full: the charts and statistics leave them out, the verdict does not",
                    p.dropped_answers
                ),
            ));
        }
    }
    h.push_str("<table class=\"facts\">\n");
    for (k, v) in facts {
        let _ = writeln!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
    }
    h.push_str("</table>\n</header>\n");

    // Verdict table with the evidence behind each metric.
    h.push_str("<h2>Metrics</h2>\n<table class=\"metrics\" id=\"metrics\">\n<thead><tr><th>metric</th><th>test</th><th>n (baseline / candidate)</th><th>baseline</th><th>candidate</th><th>statistic</th><th>p-value (α)</th><th>effect</th><th>confidence interval</th><th>tolerance</th><th>status</th></tr></thead>\n<tbody>\n");
    for e in &r.evidence {
        let stat = e.statistic.as_ref().map_or("–".to_string(), |s| {
            let z = s.z.map_or(String::new(), |z| format!(" (z = {})", num(z)));
            format!("{} = {}{z}", s.name, num(s.value))
        });
        let effect = match (e.effect, e.relative) {
            (Some(x), Some(rel)) => {
                format!("{} ({} %)", in_unit(x, &e.unit), signed(100.0 * rel))
            }
            _ => "–".into(),
        };
        let ci = e.interval.as_ref().map_or("–".to_string(), |i| {
            let scale = if e.unit == "rate" { 100.0 } else { 1.0 };
            let unit = match e.unit.as_str() {
                "rate" => "pp",
                "%" => "pp of a core",
                u => u,
            };
            format!(
                "[{}, {}] {unit}, {} % ({})",
                signed(scale * i.lower),
                signed(scale * i.upper),
                num(100.0 * i.level),
                i.method
            )
        });
        let mut tol = format!("{} %", signed(100.0 * e.tolerance));
        if e.abs_tolerance > 0.0 {
            let _ = write!(tol, " and {}", in_unit(e.abs_tolerance, &e.unit));
        }
        let dir = match e.direction {
            Direction::Increase => "bad if higher",
            Direction::Decrease => "bad if lower",
            Direction::Either => "bad either way",
        };
        let name = format!(
            "{}{}",
            e.name,
            if e.critical {
                " (critical)".to_string()
            } else {
                format!(" (weight {})", num(e.weight))
            }
        );
        let st = status_word(e.status);
        let _ = write!(
            h,
            "<tr data-metric=\"{m}\" class=\"{cls}\"><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({})</td><td>{}</td><td>{}</td><td>{}<br><small>{}</small></td><td class=\"status\">{}</td></tr>\n<tr class=\"why\"><td></td><td colspan=\"10\">{}</td></tr>\n",
            esc(&name),
            esc(test_word(e.test)),
            e.n.baseline,
            e.n.candidate,
            esc(&e.summary.baseline),
            esc(&e.summary.candidate),
            esc(&stat),
            esc(&e.p_value.map_or("–".into(), p_value)),
            esc(&num(e.alpha)),
            esc(&effect),
            esc(&ci),
            esc(&tol),
            esc(dir),
            esc(st),
            esc(&e.reason),
            m = esc(&e.name),
            cls = esc(&st.replace([' ', ','], "-")),
        );
    }
    h.push_str("</tbody>\n</table>\n");

    if !r.sequential.is_empty() {
        h.push_str("<h2>Sequential test (always valid, at the last look)</h2>\n<table class=\"metrics\" id=\"sequential\">\n<thead><tr><th>metric</th><th>n (baseline / candidate)</th><th>estimate</th><th>bounds</th><th>p-value</th><th>status</th><th>reason</th></tr></thead>\n<tbody>\n");
        for e in &r.sequential {
            let pct = |x: f64| format!("{} pp", signed(100.0 * x));
            let rel = |x: f64| format!("{} %", signed(100.0 * x));
            let f: &dyn Fn(f64) -> String = if e.name == "errors" { &pct } else { &rel };
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{} / {}</td><td>{}</td><td>[{}, {}]</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&e.name),
                e.n_baseline,
                e.n_candidate,
                esc(&f(e.estimate)),
                esc(&f(e.lower)),
                esc(&f(e.upper)),
                esc(&p_value(e.p_value)),
                esc(&format!("{:?}", e.status).to_lowercase()),
                esc(&e.reason)
            );
        }
        h.push_str("</tbody>\n</table>\n");
    }

    h.push_str("<h2>Charts</h2>\n<div class=\"charts\">\n");
    for c in charts(r) {
        h.push_str(&c.svg());
    }
    h.push_str("</div>\n");
    let _ = write!(
        h,
        "<footer>Written by <code>{}</code>. Baseline <span class=\"swatch\" style=\"background:{BASELINE}\"></span> {}, candidate <span class=\"swatch\" style=\"background:{CANDIDATE}\"></span> {}.</footer>\n</body>\n</html>\n",
        if r.progressive.is_some() {
            "pipeline apply"
        } else {
            "pipeline canary"
        },
        esc(&r.baseline),
        esc(&r.candidate)
    );
    h
}

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1280px;padding:0 16px;color:#111827;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
code{font:13px ui-monospace,monospace;background:#f3f4f6;padding:1px 4px;border-radius:3px}
code.base{color:#1d4ed8}code.cand{color:#c2410c}
.verdict{display:inline-block;margin:10px 0 4px;padding:6px 14px;border-radius:6px;font-weight:600;color:#fff}
.verdict .word{font-size:20px;letter-spacing:.05em}.verdict .score{font-weight:400;margin-left:10px}
.verdict.pass{background:#15803d}.verdict.fail{background:#b91c1c}.verdict.marginal{background:#b45309}.verdict.inconclusive{background:#4b5563}
.reason{margin:4px 0}.early{color:#b91c1c;font-weight:600}
table{border-collapse:collapse}table.facts th{text-align:left;padding:2px 12px 2px 0;color:#4b5563;font-weight:500}
table.metrics{width:100%;font-size:13px}table.metrics th,table.metrics td{border-bottom:1px solid #e5e7eb;padding:5px 6px;text-align:left;vertical-align:top}
table.metrics thead th{background:#f9fafb;font-weight:600}
table.metrics tr.why td{color:#4b5563;font-size:12px;border-bottom:2px solid #d1d5db;padding-top:0}
tr.fail td.status{color:#b91c1c;font-weight:600}tr.pass td.status{color:#15803d;font-weight:600}
tr.not-enough-data td.status{color:#4b5563;font-weight:600}tr.high--within-tolerance td.status{color:#b45309;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:14px}
figure.chart{margin:0;border:1px solid #e5e7eb;border-radius:6px;padding:6px}
figure.chart figcaption{font-size:12px;color:#4b5563;padding:0 6px 4px}
svg text{font:11px system-ui,sans-serif;fill:#374151}svg .title{font-size:13px;font-weight:600;fill:#111827}
svg .grid{stroke:#e5e7eb}svg .axis{stroke:#9ca3af}svg .hline{stroke:#6b7280;stroke-dasharray:4 3}
.swatch{display:inline-block;width:10px;height:10px;border-radius:2px}
footer{margin:28px 0 8px;color:#6b7280;font-size:12px}
";

// ------------------------------------------------------------------------------------------
// Charts

struct Line {
    /// `data-series`: `baseline`, `candidate`, or what else the line is.
    series: &'static str,
    label: String,
    color: &'static str,
    dashed: bool,
    /// Step function (ECDF) instead of straight segments.
    step: bool,
    markers: bool,
    points: Vec<(f64, f64)>,
}

struct Chart {
    id: &'static str,
    title: String,
    caption: String,
    x_label: String,
    y_label: String,
    lines: Vec<Line>,
    hlines: Vec<(f64, String)>,
    y_fixed: Option<(f64, f64)>,
    log_x: bool,
}

fn arm_line(
    arm: &'static str,
    label: &str,
    dashed: bool,
    markers: bool,
    points: Vec<(f64, f64)>,
) -> Line {
    Line {
        series: arm,
        label: label.to_string(),
        color: if arm == "baseline" {
            BASELINE
        } else {
            CANDIDATE
        },
        dashed,
        step: false,
        markers,
        points,
    }
}

fn charts(r: &Report) -> Vec<Chart> {
    let s = &r.series;
    let mut out = Vec::new();
    let since = if r.progressive.is_some() {
        "seconds since the canary started"
    } else {
        "seconds since load started"
    };

    // The candidate's share of the traffic, step by step.
    if let Some(p) = &r.progressive {
        let mut l = arm_line(
            "candidate",
            "candidate's share",
            false,
            true,
            p.steps
                .iter()
                .map(|&(t, pct)| (t, f64::from(pct)))
                .collect(),
        );
        l.step = true;
        out.push(Chart {
            id: "traffic-share",
            title: "Traffic share of the candidate".into(),
            caption: "The candidate's share of the balancers' traffic from each step's start; the last point is the end (100 % promoted, 0 % aborted).".into(),
            x_label: since.into(),
            y_label: "% of the traffic".into(),
            lines: vec![l],
            hlines: vec![],
            y_fixed: Some((0.0, 100.0)),
            log_x: false,
        });
    }

    // Latency distributions.
    let ecdf = |v: &Vec<[f64; 2]>| v.iter().map(|p| (p[0], p[1])).collect::<Vec<_>>();
    let (eb, ec) = (
        ecdf(&s.latency_ecdf.baseline),
        ecdf(&s.latency_ecdf.candidate),
    );
    let xs: Vec<f64> = eb.iter().chain(&ec).map(|p| p.0).collect();
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_x = lo > 0.0 && hi / lo > 20.0;
    let mut lines = Vec::new();
    for (arm, pts) in [("baseline", eb), ("candidate", ec)] {
        let mut l = arm_line(arm, arm, false, false, pts);
        l.step = true;
        lines.push(l);
    }
    out.push(Chart {
        id: "latency-ecdf",
        title: "Latency distribution (ECDF)".into(),
        caption: "Share of answers (below 400) at or under each latency; a candidate curve to the right is slower.".into(),
        x_label: if log_x { "latency, ms (log)" } else { "latency, ms" }.into(),
        y_label: "share of answers".into(),
        lines,
        hlines: vec![],
        y_fixed: Some((0.0, 1.0)),
        log_x,
    });

    // Latency over time.
    let mut lines = Vec::new();
    for (arm, pick) in [
        (
            "baseline",
            (|w: &Window| &w.baseline) as fn(&Window) -> &ArmWindow,
        ),
        ("candidate", |w: &Window| &w.candidate),
    ] {
        for (label, q, dashed) in [
            (
                "p50",
                (|a: &ArmWindow| a.p50_ms) as fn(&ArmWindow) -> Option<f64>,
                false,
            ),
            ("p99", |a: &ArmWindow| a.p99_ms, true),
        ] {
            let pts = s
                .windows
                .iter()
                .filter_map(|w| Some((w.t, q(pick(w))?)))
                .collect();
            lines.push(arm_line(arm, &format!("{arm} {label}"), dashed, true, pts));
        }
    }
    out.push(Chart {
        id: "latency-time",
        title: "Latency p50 / p99 over time".into(),
        caption: format!(
            "Per {} s window of answers (below 400); p99 dashed.",
            num(s.window_s)
        ),
        x_label: since.into(),
        y_label: "ms".into(),
        lines,
        hlines: vec![],
        y_fixed: None,
        log_x: false,
    });

    // Errors over time.
    let mut lines = Vec::new();
    for (arm, pick) in [
        (
            "baseline",
            (|w: &Window| &w.baseline) as fn(&Window) -> &ArmWindow,
        ),
        ("candidate", |w: &Window| &w.candidate),
    ] {
        let pts = s
            .windows
            .iter()
            .filter(|w| pick(w).answers > 0)
            .map(|w| {
                let a = pick(w);
                (w.t, 100.0 * a.errors as f64 / a.answers as f64)
            })
            .collect();
        lines.push(arm_line(arm, arm, false, true, pts));
    }
    out.push(Chart {
        id: "errors-time",
        title: "5xx rate over time".into(),
        caption: format!(
            "Share of answers with a 5xx status per {} s window.",
            num(s.window_s)
        ),
        x_label: since.into(),
        y_label: "% of answers".into(),
        lines,
        hlines: vec![],
        y_fixed: None,
        log_x: false,
    });

    // CPU and memory (not sampled by the progressive canary).
    let usage_charts = if r.progressive.is_some() { 0 } else { 2 };
    for (id, title, y_label, caption, pick) in [
        (
            "cpu-time",
            "CPU per arm",
            "% of one core",
            "utime + stime of each arm's app processes over each 0.5 s interval.",
            (|u: &ArmUsage| u.cpu_pct) as fn(&ArmUsage) -> Option<f64>,
        ),
        (
            "memory-time",
            "Memory (RSS) per arm",
            "MiB",
            "Resident memory of each arm's app processes, summed.",
            |u: &ArmUsage| u.rss_mib,
        ),
    ]
    .into_iter()
    .take(usage_charts)
    {
        let mut lines = Vec::new();
        for (arm, side) in [
            (
                "baseline",
                (|u: &UsageSample| &u.baseline) as fn(&UsageSample) -> &ArmUsage,
            ),
            ("candidate", |u: &UsageSample| &u.candidate),
        ] {
            let pts = s
                .usage
                .iter()
                .filter_map(|u| Some((u.t, pick(side(u))?)))
                .collect();
            lines.push(arm_line(arm, arm, false, true, pts));
        }
        out.push(Chart {
            id,
            title: title.into(),
            caption: caption.into(),
            x_label: since.into(),
            y_label: y_label.into(),
            lines,
            hlines: vec![],
            y_fixed: None,
            log_x: false,
        });
    }

    // Score over time.
    out.push(Chart {
        id: "score-time",
        title: "Score over time".into(),
        caption: "The fixed judge's score on the data so far at every look; metrics still lacking data count as not passing.".into(),
        x_label: since.into(),
        y_label: "score".into(),
        lines: vec![Line {
            series: "score",
            label: "score".into(),
            color: NEUTRAL,
            dashed: false,
            step: false,
            markers: true,
            points: s.looks.iter().map(|l| (l.t, l.score)).collect(),
        }],
        hlines: vec![
            (r.pass_threshold, format!("pass {}", num(r.pass_threshold))),
            (
                r.marginal_threshold,
                format!("marginal {}", num(r.marginal_threshold)),
            ),
        ],
        y_fixed: Some((0.0, 100.0)),
        log_x: false,
    });

    // The sequential test's evidence on each of its metrics.
    let names: Vec<String> = s
        .looks
        .last()
        .map(|l| l.evidence.iter().map(|e| e.name.clone()).collect())
        .unwrap_or_default();
    for name in names {
        // Rate differences in percentage points, relative effects in percent.
        let scale = 100.0;
        let series = |f: fn(&MetricEvidence) -> f64| -> Vec<(f64, f64)> {
            s.looks
                .iter()
                .filter_map(|l| {
                    let e = l.evidence.iter().find(|e| e.name == name)?;
                    let v = f(e);
                    v.is_finite().then_some((l.t, scale * v))
                })
                .collect()
        };
        let line = |series_name: &'static str, label: &str, dashed: bool, pts| Line {
            series: series_name,
            label: label.into(),
            color: NEUTRAL,
            dashed,
            step: false,
            markers: !dashed,
            points: pts,
        };
        let unit = if name == "errors" {
            "rate difference, pp"
        } else {
            "relative effect, %"
        };
        out.push(Chart {
            id: "sequential",
            title: format!("Sequential test: {name}"),
            caption: format!(
                "Candidate − baseline ({unit}) with its always-valid confidence bounds at each look; failing needs the lower bound above 0."
            ),
            x_label: since.into(),
            y_label: unit.into(),
            lines: vec![
                line("estimate", "estimate", false, series(|e| e.estimate)),
                line("lower", "lower bound", true, series(|e| e.lower)),
                line("upper", "upper bound", true, series(|e| e.upper)),
            ],
            hlines: vec![(0.0, "0".into())],
            y_fixed: None,
            log_x: false,
        });
    }
    out
}

/// About `n` round tick values covering [lo, hi].
fn ticks(lo: f64, hi: f64, n: usize) -> (Vec<f64>, f64) {
    let span = (hi - lo).max(1e-12);
    let raw = span / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let mut v = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    (v, step)
}

fn tick_label(v: f64, step: f64) -> String {
    // As many decimals as the step needs (2.5 needs one, 0.25 two).
    let decimals = (0..4)
        .find(|d| {
            let x = step * 10f64.powi(*d);
            (x - x.round()).abs() < 1e-6 * x.abs().max(1.0)
        })
        .unwrap_or(4) as usize;
    format!("{v:.decimals$}").replace('-', "−")
}

impl Chart {
    fn svg(&self) -> String {
        const W: f64 = 600.0;
        const H: f64 = 300.0;
        let (ml, mr, mt, mb) = (58.0, 18.0, 30.0, 64.0);
        let (pw, ph) = (W - ml - mr, H - mt - mb);
        let all: Vec<(f64, f64)> = self
            .lines
            .iter()
            .flat_map(|l| l.points.iter().copied())
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_x || *x > 0.0))
            .collect();
        let tx = |x: f64| if self.log_x { x.log10() } else { x };
        let (mut x0, mut x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |a, p| {
            (a.0.min(tx(p.0)), a.1.max(tx(p.0)))
        });
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            (x0, x1) = (x0 - 0.5, x1 + 0.5);
        }
        let (y0, y1) = match self.y_fixed {
            Some(r) => r,
            None => {
                let ys = all.iter().map(|p| p.1);
                let lo = ys.clone().fold(0.0, f64::min);
                let hi = ys.fold(f64::NEG_INFINITY, f64::max).max(
                    self.hlines
                        .iter()
                        .map(|h| h.0)
                        .fold(f64::NEG_INFINITY, f64::max),
                );
                let hi = if hi.is_finite() && hi > lo {
                    hi
                } else {
                    lo + 1.0
                };
                let hi = hi + (hi - lo) * 0.05;
                let step = ticks(lo, hi, 5).1;
                ((lo / step).floor() * step, (hi / step).ceil() * step)
            }
        };
        let sx = |x: f64| ml + (tx(x) - x0) / (x1 - x0) * pw;
        let sy = |y: f64| mt + ph - (y - y0) / (y1 - y0) * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            "<figure class=\"chart\" data-chart=\"{id}\">\n<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"{t}\">\n<text class=\"title\" x=\"{ml}\" y=\"18\">{t}</text>\n",
            id = esc(self.id),
            t = esc(&self.title),
        );
        // Grid and axes.
        let (yt, ystep) = ticks(y0, y1, 5);
        for v in &yt {
            let y = sy(*v);
            let _ = writeln!(
                s,
                "<line class=\"grid\" x1=\"{ml}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                ml + pw,
                ml - 6.0,
                y + 4.0,
                esc(&tick_label(*v, ystep))
            );
        }
        let xt: Vec<(f64, String)> = if self.log_x {
            let (a, b) = (x0.floor() as i32, x1.ceil() as i32);
            // 1-2-5 per decade when there are few decades, else decades only.
            let mantissas: &[f64] = if b - a <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
            (a..=b)
                .flat_map(|e| mantissas.iter().map(move |m| m * 10f64.powi(e)))
                .filter(|v| v.log10() >= x0 - 1e-9 && v.log10() <= x1 + 1e-9)
                .map(|v| (v, num(v)))
                .collect()
        } else {
            let (t, step) = ticks(x0, x1, 6);
            t.into_iter().map(|v| (v, tick_label(v, step))).collect()
        };
        for (v, label) in &xt {
            let x = sx(*v);
            let _ = writeln!(
                s,
                "<line class=\"grid\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{mt}\" y2=\"{:.1}\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                mt + ph,
                mt + ph + 15.0,
                esc(label)
            );
        }
        let _ = writeln!(
            s,
            "<line class=\"axis\" x1=\"{ml}\" x2=\"{ml}\" y1=\"{mt}\" y2=\"{b:.1}\"/><line class=\"axis\" x1=\"{ml}\" x2=\"{r:.1}\" y1=\"{b:.1}\" y2=\"{b:.1}\"/>",
            b = mt + ph,
            r = ml + pw
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text><text transform=\"translate(14 {:.1}) rotate(-90)\" text-anchor=\"middle\">{}</text>",
            ml + pw / 2.0,
            mt + ph + 32.0,
            esc(&self.x_label),
            mt + ph / 2.0,
            esc(&self.y_label)
        );
        for (v, label) in &self.hlines {
            if *v < y0 || *v > y1 {
                continue;
            }
            let y = sy(*v);
            let _ = writeln!(
                s,
                "<line class=\"hline\" x1=\"{ml}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                ml + pw,
                ml + pw - 2.0,
                y - 3.0,
                esc(label)
            );
        }
        // The data.
        let clip_y = |y: f64| y.clamp(y0, y1);
        for l in &self.lines {
            let pts: Vec<(f64, f64)> = l
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_x || *x > 0.0))
                .collect();
            let _ = write!(
                s,
                "<g class=\"series\" data-series=\"{}\" data-label=\"{}\" data-points=\"{}\">",
                esc(l.series),
                esc(&l.label),
                pts.len()
            );
            if !pts.is_empty() {
                let mut d = String::new();
                let mut prev: Option<(f64, f64)> = None;
                for &(x, y) in &pts {
                    let (px, py) = (sx(x), sy(clip_y(y)));
                    match prev {
                        None if l.step => {
                            let _ = write!(d, "M{px:.1},{:.1}L{px:.1},{py:.1}", sy(y0));
                        }
                        None => {
                            let _ = write!(d, "M{px:.1},{py:.1}");
                        }
                        Some((_, qy)) if l.step => {
                            let _ = write!(d, "L{px:.1},{qy:.1}L{px:.1},{py:.1}");
                        }
                        Some(_) => {
                            let _ = write!(d, "L{px:.1},{py:.1}");
                        }
                    }
                    prev = Some((px, py));
                }
                let _ = write!(
                    s,
                    "<path d=\"{d}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\"{}/>",
                    l.color,
                    if l.dashed {
                        " stroke-dasharray=\"5 3\""
                    } else {
                        ""
                    }
                );
                if l.markers {
                    let stride = pts.len().div_ceil(150).max(1);
                    for &(x, y) in pts.iter().step_by(stride) {
                        let _ = write!(
                            s,
                            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.2\" fill=\"{}\"/>",
                            sx(x),
                            sy(clip_y(y)),
                            l.color
                        );
                    }
                }
            }
            s.push_str("</g>\n");
        }
        if all.is_empty() {
            let _ = writeln!(
                s,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">no data</text>",
                ml + pw / 2.0,
                mt + ph / 2.0
            );
        }
        // Legend, below the axis label.
        let mut lx = ml;
        for l in &self.lines {
            let _ = write!(
                s,
                "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{}\" stroke-width=\"2\"{}/><text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                lx + 18.0,
                l.color,
                if l.dashed { " stroke-dasharray=\"5 3\"" } else { "" },
                lx + 22.0,
                H - 10.0,
                esc(&l.label),
                y = H - 14.0,
            );
            lx += 34.0 + 6.5 * l.label.chars().count() as f64;
        }
        let _ = write!(
            s,
            "\n</svg>\n<figcaption>{}</figcaption>\n</figure>\n",
            esc(&self.caption)
        );
        s
    }
}

/// The report as text for a terminal: one row per metric with its evidence, then the score.
pub fn render_text(r: &Report) -> String {
    let l = &r.load;
    let mut out = format!(
        "\nCanary of {}: {} (baseline) vs {} (candidate)\nLoad: {} {} at {} req/s for {} s; {} requests, {} answered 2xx, {} not; answers: baseline {}, candidate {}\n\n",
        r.service,
        r.baseline,
        r.candidate,
        r.request.method,
        r.request.path,
        l.rate,
        num(l.ran_s),
        l.sent,
        l.ok_2xx,
        l.other,
        l.answers.baseline,
        l.answers.candidate
    );
    out.push_str(&format!(
        "{:<10} {:<36} {:<36} {:>10} {:>10}  {}\n",
        "METRIC", "BASELINE", "CANDIDATE", "EFFECT", "P-VALUE", "VERDICT"
    ));
    let compact = |e: &Evidence, s: &Option<pipeline_analysis::Summary>| match s {
        Some(pipeline_analysis::Summary::Continuous(x)) if x.n > 0 => format!(
            "n={} p50={}{u} p99={}{u}",
            x.n,
            num(x.median),
            num(x.p99),
            u = e.unit
        ),
        Some(pipeline_analysis::Summary::Proportion {
            events,
            total,
            rate,
        }) => format!("{events}/{total} ({}%)", num(100.0 * rate)),
        _ => "-".into(),
    };
    for (e, m) in r.evidence.iter().zip(&r.verdict.per_metric) {
        let effect = e
            .relative
            .map_or("-".into(), |x| format!("{:+.1}%", x * 100.0));
        let p = e.p_value.map_or("-".into(), |p| format!("{p:.2e}"));
        out.push_str(&format!(
            "{:<10} {:<36} {:<36} {:>10} {:>10}  {:?}{}\n",
            e.name,
            compact(e, &m.baseline),
            compact(e, &m.candidate),
            effect,
            p,
            m.status,
            if e.critical { " (critical)" } else { "" }
        ));
        let mut ev = Vec::new();
        if let Some(s) = &e.statistic {
            ev.push(format!("{} = {}", s.name, num(s.value)));
        }
        if let (Some(x), Some(i)) = (e.effect, &e.interval) {
            let k = if e.unit == "rate" { 100.0 } else { 1.0 };
            let u = if e.unit == "rate" { "pp" } else { &e.unit };
            ev.push(format!(
                "shift {:+.3} {u}, {:.0}% CI [{:+.3}, {:+.3}]",
                k * x,
                100.0 * i.level,
                k * i.lower,
                k * i.upper
            ));
        }
        ev.push(format!("tolerance {:.0}%", 100.0 * e.tolerance));
        out.push_str(&format!("           {}; {}\n", ev.join(", "), e.reason));
    }
    out.push_str(&format!(
        "\nScore {:.0} (pass >= {}, marginal >= {}): {:?}. {}\n",
        r.verdict.score,
        num(r.pass_threshold),
        num(r.marginal_threshold),
        r.verdict.outcome,
        r.verdict.reason
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            esc(r#"<a href="x">&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
    }

    fn report(baseline: &str, candidate: &str) -> Report {
        use pipeline_analysis::judge::{judge, JudgeConfig, Metric};
        let cfg = JudgeConfig::with_metrics(vec![Metric::continuous("latency")]);
        Report {
            service: "service.web".into(),
            baseline: baseline.into(),
            candidate: candidate.into(),
            request: RequestInfo {
                method: "GET".into(),
                path: "/p?a=<b>&c=\"d\"".into(),
                content_type: None,
                body_bytes: 0,
            },
            load: LoadInfo {
                rate: 10,
                duration_s: 1.0,
                ran_s: 1.0,
                replicas: 1,
                sent: 0,
                ok_2xx: 0,
                other: 0,
                answers: ArmPair::default(),
            },
            early_stop: None,
            confidence: 0.98,
            pass_threshold: 95.0,
            marginal_threshold: 75.0,
            verdict: judge(&cfg, &Default::default()),
            evidence: vec![],
            sequential: vec![],
            series: Series::default(),
            progressive: None,
        }
    }

    #[test]
    fn every_string_is_escaped() {
        let h = render_html(&report("<script>alert(1)</script>", "x\" onload=\"y"));
        assert!(!h.contains("<script"), "{h}");
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!h.contains("x\" onload"), "{h}");
        assert!(h.contains("/p?a=&lt;b&gt;&amp;c=&quot;d&quot;"));
        // No data: the charts say so instead of drawing nothing.
        assert_eq!(h.matches("<svg").count(), 6);
        assert!(h.contains(">no data</text>"));
        assert!(h.contains("data-outcome=\"inconclusive\""));
        // Self-contained: nothing is fetched.
        for external in ["src=", "href=", "@import", "url("] {
            assert!(!h.contains(external), "{external}");
        }
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(95.0), "95");
        assert_eq!(num(0.25), "0.25");
        assert_eq!(num(10.6), "10.6");
        assert_eq!(num(-1.5), "−1.5");
        assert_eq!(num(0.0012), "1.20e−3");
        assert_eq!(num(f64::NAN), "–");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let (t, step) = ticks(0.0, 97.0, 5);
        assert_eq!(step, 20.0);
        assert_eq!(t, vec![0.0, 20.0, 40.0, 60.0, 80.0]);
        let (t, step) = ticks(0.0, 0.9, 5);
        assert_eq!(step, 0.2);
        assert_eq!(tick_label(t[2], step), "0.4");
        assert_eq!(tick_label(7.5, 2.5), "7.5");
        assert_eq!(tick_label(-40.0, 20.0), "−40");
    }
}
