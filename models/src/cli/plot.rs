//! `baton train --plot FILE.svg`: the loss curve as a small hand-written SVG.
//!
//! One `<polyline class="train">` with a point per training step (x: the
//! step, y: its loss), and, with evaluations, one `<polyline class="eval">`
//! plus a circle per evaluation. Both share one linear y axis from the
//! smallest to the largest finite loss; a non-finite loss is left out.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use baton_engine::eval::EvalPoint;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 360.0;
/// Plot area margins: left, right, top, bottom.
const MARGIN: (f64, f64, f64, f64) = (60.0, 20.0, 30.0, 40.0);

/// Maps (step, loss) to SVG coordinates.
struct Axes {
    steps: f64,
    low: f64,
    high: f64,
}

impl Axes {
    fn new(losses: &[f32], evals: &[EvalPoint]) -> Axes {
        let values = losses.iter().chain(evals.iter().map(|e| &e.loss)).map(|&v| f64::from(v));
        let finite: Vec<f64> = values.filter(|v| v.is_finite()).collect();
        let low = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let high = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (low, high) = match (low.is_finite(), high > low) {
            (true, true) => (low, high),
            (true, false) => (low - 0.5, low + 0.5),
            _ => (0.0, 1.0),
        };
        Axes { steps: losses.len().max(2) as f64 - 1.0, low, high }
    }

    fn x(&self, step: f64) -> f64 {
        MARGIN.0 + step / self.steps * (WIDTH - MARGIN.0 - MARGIN.1)
    }

    fn y(&self, loss: f64) -> f64 {
        let inner = HEIGHT - MARGIN.2 - MARGIN.3;
        MARGIN.2 + (self.high - loss) / (self.high - self.low) * inner
    }
}

/// The SVG text of the curve of `losses` (one per step) and `evals`.
pub fn svg(title: &str, losses: &[f32], evals: &[EvalPoint]) -> String {
    let axes = Axes::new(losses, evals);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#);
    let _ = writeln!(out, r#"<text x="{}" y="18">{}</text>"#, MARGIN.0, escape(title));
    frame(&mut out, &axes);
    let train = losses.iter().enumerate().map(|(s, &l)| (s as f64, f64::from(l)));
    polyline(&mut out, &axes, "train", "#1f77b4", train);
    if !evals.is_empty() {
        let points = evals.iter().map(|e| (f64::from(e.step), f64::from(e.loss)));
        polyline(&mut out, &axes, "eval", "#d62728", points.clone());
        for (s, l) in points.filter(|(_, l)| l.is_finite()) {
            let _ = writeln!(out, r##"<circle cx="{:.2}" cy="{:.2}" r="3" fill="#d62728"/>"##, axes.x(s), axes.y(l));
        }
    }
    legend(&mut out, !evals.is_empty());
    out.push_str("</svg>\n");
    out
}

/// Axes with min/max loss labels and the step range.
fn frame(out: &mut String, axes: &Axes) {
    let (left, bottom) = (MARGIN.0, HEIGHT - MARGIN.3);
    let (right, top) = (WIDTH - MARGIN.1, MARGIN.2);
    let _ =
        writeln!(out, r#"<path d="M{left} {top} V{bottom} H{right}" fill="none" stroke="black" stroke-width="1"/>"#);
    for v in [axes.low, (axes.low + axes.high) / 2.0, axes.high] {
        let y = axes.y(v);
        let _ = writeln!(out, r#"<text x="{}" y="{:.2}" text-anchor="end">{v:.3}</text>"#, left - 6.0, y + 4.0);
    }
    let last = axes.steps as u64;
    let _ = writeln!(out, r#"<text x="{left}" y="{}" text-anchor="middle">0</text>"#, bottom + 16.0);
    let _ = writeln!(out, r#"<text x="{right}" y="{}" text-anchor="middle">{last}</text>"#, bottom + 16.0);
    let _ =
        writeln!(out, r#"<text x="{}" y="{}" text-anchor="middle">step</text>"#, (left + right) / 2.0, bottom + 32.0);
}

fn polyline(out: &mut String, axes: &Axes, class: &str, color: &str, points: impl Iterator<Item = (f64, f64)>) {
    let coords: Vec<String> =
        points.filter(|(_, l)| l.is_finite()).map(|(s, l)| format!("{:.2},{:.2}", axes.x(s), axes.y(l))).collect();
    let _ = writeln!(
        out,
        r#"<polyline class="{class}" points="{}" fill="none" stroke="{color}" stroke-width="1.5"/>"#,
        coords.join(" ")
    );
}

fn legend(out: &mut String, evals: bool) {
    let x = WIDTH - MARGIN.1 - 150.0;
    let _ = writeln!(out, r##"<text x="{x}" y="18" fill="#1f77b4">— train loss</text>"##);
    if evals {
        let _ = writeln!(out, r##"<text x="{}" y="18" fill="#d62728">● eval loss</text>"##, x + 85.0);
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Writes the plot to `path`.
pub fn write(path: &Path, title: &str, losses: &[f32], evals: &[EvalPoint]) -> anyhow::Result<()> {
    std::fs::write(path, svg(title, losses, evals)).with_context(|| format!("--plot {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_point_per_step_and_per_evaluation() {
        let evals = [EvalPoint { step: 1, loss: 2.0 }, EvalPoint { step: 3, loss: 1.5 }];
        let text = svg("a <b>", &[3.0, 2.5, f32::NAN, 1.0], &evals);
        let count = |class: &str| {
            let start = text.find(&format!(r#"class="{class}" points=""#)).unwrap() + class.len() + 17;
            text[start..].split('"').next().unwrap().split(' ').count()
        };
        assert_eq!(count("train"), 3, "the NaN loss is left out:\n{text}");
        assert_eq!(count("eval"), 2);
        assert_eq!(text.matches("<circle").count(), 2);
        assert!(text.contains("a &lt;b&gt;") && text.ends_with("</svg>\n"));
        // The highest loss sits at the top of the plot area, the lowest at the bottom.
        assert!(text.contains(&format!("{:.2},{:.2}", MARGIN.0, MARGIN.2)), "{text}");
    }
}
