//! What a suite run leaves behind, beside its report: one `.hgrm` percentile distribution per
//! case (HdrHistogram's text format, which the usual plotters read), a latency-by-percentile
//! SVG chart per workload (ours and the baselines on one chart), and a JSON summary that
//! `neo-bench compare` reads back.

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Nanoseconds per unit of the values written to `.hgrm` files: microseconds.
const HGRM_UNIT_NS: f64 = 1_000.0;

/// A histogram of nanoseconds as HdrHistogram's percentile distribution text, values in
/// microseconds: "Value Percentile TotalCount 1/(1-Percentile)", then the summary lines
/// (the same writer as `neo ctl stats --hgrm`'s).
pub fn hgrm(histogram: &Histogram<u64>) -> String {
    engine::metrics::hgrm(histogram, HGRM_UNIT_NS)
}

/// One line of a chart: a name and its histogram.
pub struct Series<'a> {
    pub name: String,
    pub baseline: bool,
    pub histogram: &'a Histogram<u64>,
}

const WIDTH: f64 = 900.0;
const HEIGHT: f64 = 520.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 300.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
/// The x axis ends at 99.999%: 1/(1-p) = 10^5.
const X_DECADES: f64 = 5.0;
const COLOURS: [&str; 12] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
    "#bcbd22", "#7f7f7f", "#000000", "#aec7e8",
];

/// A latency-by-percentile chart: x is the percentile on HdrHistogram's usual log scale of
/// 1/(1-p) (0%, 90%, 99%, ...), y the latency on a log scale (the baselines span from tens of
/// microseconds to milliseconds). Baselines are dashed.
pub fn svg(title: &str, series: &[Series<'_>]) -> String {
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let points: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.histogram
                .iter_quantiles(5)
                .map(|step| {
                    let q = step.quantile_iterated_to().min(1.0 - 1e-5);
                    ((1.0 / (1.0 - q)).log10(), step.value_iterated_to().max(1) as f64)
                })
                .collect()
        })
        .collect();
    let all = points.iter().flatten().map(|&(_, y)| y);
    let low = all.clone().fold(f64::INFINITY, f64::min).max(1.0);
    let high = all.fold(1.0, f64::max);
    let (y_min, y_max) = (10f64.powf(low.log10().floor()), 10f64.powf(high.log10().ceil()));
    let y_span = (y_max.log10() - y_min.log10()).max(1.0);
    let x_of = |x: f64| LEFT + x.min(X_DECADES) / X_DECADES * plot_width;
    let y_of = |y: f64| TOP + plot_height - (y.log10() - y_min.log10()) / y_span * plot_height;

    let mut out = String::new();
    writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    )
    .unwrap();
    writeln!(out, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#).unwrap();
    writeln!(out, r#"<text x="{LEFT}" y="24" font-size="15">{}</text>"#, escape(title)).unwrap();
    for decade in 0..=X_DECADES as u32 {
        let x = x_of(f64::from(decade));
        let label = match decade {
            0 => "0%".to_owned(),
            d => format!("{}%", 100.0 - 100.0 / 10f64.powi(d as i32)),
        };
        writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_height,
            TOP + plot_height + 18.0
        )
        .unwrap();
    }
    let mut tick = y_min;
    while tick <= y_max * 1.0001 {
        for multiple in [1.0, 2.0, 5.0] {
            let value = tick * multiple;
            if value > y_max * 1.0001 {
                break;
            }
            let y = y_of(value);
            writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#{}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_width,
                if multiple == 1.0 { "ccc" } else { "eee" },
                LEFT - 6.0,
                y + 4.0,
                crate::report::format_ns(value)
            )
            .unwrap();
        }
        tick *= 10.0;
    }
    writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">latency</text>"#,
        LEFT + plot_width / 2.0,
        HEIGHT - 16.0,
        TOP + plot_height / 2.0,
        TOP + plot_height / 2.0
    )
    .unwrap();
    for (index, (s, points)) in series.iter().zip(&points).enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let dash = if s.baseline { r#" stroke-dasharray="6 4""# } else { "" };
        let path: Vec<String> =
            points.iter().map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y))).collect();
        writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
            path.join(" ")
        )
        .unwrap();
        let y = TOP + 10.0 + index as f64 * 20.0;
        let x = LEFT + plot_width + 16.0;
        writeln!(
            out,
            r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 24.0,
            x + 30.0,
            y + 4.0,
            escape(&s.name)
        )
        .unwrap();
    }
    out.push_str("</svg>\n");
    out
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Writes `contents` to `directory/name`, saying so on failure (a report still prints).
pub fn write(directory: &Path, name: &str, contents: &str) {
    if let Err(error) = std::fs::write(directory.join(name), contents) {
        eprintln!("neo-bench: cannot write {}: {error}", directory.join(name).display());
    }
}

/// Two summaries side by side: every case of either, its rate and p50/p99 in both, and the
/// change from A to B.
pub fn compare(a: &Value, b: &Value) -> Result<String, String> {
    let cases = |summary: &Value, which: &str| -> Result<Vec<Value>, String> {
        summary["cases"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("{which} is not a neo-bench summary (no \"cases\" list)"))
    };
    let (cases_a, cases_b) = (cases(a, "A")?, cases(b, "B")?);
    let mut out = String::new();
    for (which, summary) in [("A", a), ("B", b)] {
        writeln!(
            out,
            "{which}: {}  commit {}  {}",
            summary["started"].as_str().unwrap_or("?"),
            summary["git_commit"].as_str().unwrap_or("?"),
            summary["machine"]["summary"].as_str().unwrap_or("?")
        )
        .unwrap();
    }
    writeln!(
        out,
        "\n{:<40} {:>21} {:>7}  {:>21} {:>7}  {:>21} {:>7}",
        "case", "ops/s A -> B", "change", "p50 A -> B", "change", "p99 A -> B", "change"
    )
    .unwrap();
    let mut ids: Vec<&str> = cases_a.iter().filter_map(|c| c["id"].as_str()).collect();
    for case in &cases_b {
        if let Some(id) = case["id"].as_str().filter(|id| !ids.contains(id)) {
            ids.push(id);
        }
    }
    let find = |cases: &[Value], id: &str| cases.iter().find(|c| c["id"] == id).cloned();
    for id in ids {
        let (one, two) = (find(&cases_a, id), find(&cases_b, id));
        let label = one.as_ref().or(two.as_ref()).and_then(|c| c["label"].as_str()).unwrap_or(id);
        let mut line = format!("{label:<40}");
        for (field, format) in [
            ("rate", crate::report::format_rate as fn(f64) -> String),
            ("p50_ns", crate::report::format_ns),
            ("p99_ns", crate::report::format_ns),
        ] {
            let value = |case: &Option<Value>| case.as_ref().and_then(|c| c[field].as_f64());
            let (x, y) = (value(&one), value(&two));
            let shown = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), format);
            let change = match (x, y) {
                (Some(x), Some(y)) if x > 0.0 => format!("{:+.1}%", (y / x - 1.0) * 100.0),
                _ => String::new(),
            };
            write!(line, " {:>21} {change:>7} ", format!("{} -> {}", shown(x), shown(y))).unwrap();
        }
        writeln!(out, "{}", line.trim_end()).unwrap();
    }
    out.push_str("\nRates: higher is better; latencies: lower is better. Compare runs made on the same machine.\n");
    Ok(out)
}

/// A summary read from a file, with a clear error.
pub fn read_summary(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))
}

/// The JSON object of one percentile line, in nanoseconds.
pub fn percentiles_json(histogram: &Histogram<u64>) -> Value {
    json!({
        "count": histogram.len(),
        "p50_ns": histogram.value_at_quantile(0.5),
        "p90_ns": histogram.value_at_quantile(0.9),
        "p99_ns": histogram.value_at_quantile(0.99),
        "p999_ns": histogram.value_at_quantile(0.999),
        "max_ns": histogram.max(),
        "mean_ns": histogram.mean(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::histogram_ns;

    fn sample() -> Histogram<u64> {
        let mut histogram = histogram_ns();
        for value in 1..=10_000u64 {
            histogram.record(value * 1_000).unwrap();
        }
        histogram
    }

    #[test]
    fn hgrm_lists_percentiles_in_microseconds_up_to_the_total() {
        let text = hgrm(&sample());
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().map(|f| f.parse().unwrap()).collect())
            .collect();
        assert!(rows.len() > 20);
        // Values and percentiles never go down; the last row holds every sample.
        for pair in rows.windows(2) {
            assert!(pair[1][0] >= pair[0][0] && pair[1][1] >= pair[0][1]);
        }
        let last = rows.last().unwrap();
        assert_eq!(last[1], 1.0);
        assert_eq!(last[2], 10_000.0);
        assert!((last[0] - 10_000.0).abs() / 10_000.0 < 0.001, "max in us: {}", last[0]);
        let median = rows.iter().find(|r| r[1] >= 0.5).unwrap();
        assert!((median[0] - 5_000.0).abs() / 5_000.0 < 0.01, "p50 in us: {}", median[0]);
        assert!(text.contains("#[Max     =    10002.431"), "the highest equivalent value: {text}");
        assert!(text.contains("Total count    =        10000]"), "{text}");
    }

    #[test]
    fn svg_draws_one_line_and_one_legend_entry_per_series() {
        let (ours, theirs) = (sample(), sample());
        let series = [
            Series { name: "ours <1>".into(), baseline: false, histogram: &ours },
            Series { name: "baseline".into(), baseline: true, histogram: &theirs },
        ];
        let svg = svg("loads & more", &series);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("stroke-dasharray").count(), 2, "the baseline's line and legend");
        assert!(svg.contains("ours &lt;1&gt;") && svg.contains("loads &amp; more"));
        assert!(svg.contains(">99.9%<"));
        // Every coordinate is a finite number inside the canvas.
        for points in svg.split("points=\"").skip(1) {
            for point in points.split('"').next().unwrap().split(' ') {
                let (x, y) = point.split_once(',').unwrap();
                let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
                assert!((0.0..=WIDTH).contains(&x) && (0.0..=HEIGHT).contains(&y), "{point}");
            }
        }
    }

    #[test]
    fn compare_shows_the_change_of_every_case_in_either_run() {
        let a = json!({"started": "a", "cases": [
            {"id": "zwrk-1", "label": "zwrk 1", "rate": 1000.0, "p50_ns": 100_000.0, "p99_ns": 200_000.0},
            {"id": "gone", "label": "only in A", "rate": 5.0, "p50_ns": 1.0, "p99_ns": 1.0},
        ]});
        let b = json!({"started": "b", "cases": [
            {"id": "zwrk-1", "label": "zwrk 1", "rate": 1500.0, "p50_ns": 50_000.0, "p99_ns": 200_000.0},
            {"id": "new", "label": "only in B", "rate": 7.0, "p50_ns": 1.0, "p99_ns": 1.0},
        ]});
        let text = compare(&a, &b).unwrap();
        let line = text.lines().find(|l| l.starts_with("zwrk 1")).unwrap();
        assert!(
            line.contains("+50.0%") && line.contains("-50.0%") && line.contains("+0.0%"),
            "{line}"
        );
        assert!(text.lines().any(|l| l.starts_with("only in A") && l.contains("5 /s -> -")));
        assert!(text.lines().any(|l| l.starts_with("only in B") && l.contains("- -> 7 /s")));
        assert!(compare(&json!({"x": 1}), &b).unwrap_err().contains("not a neo-bench summary"));
    }
}
