//! The run's timeline as a Chrome trace (open it in Perfetto or
//! chrome://tracing): one process row per worker, one complete event ("X")
//! per span of forward, backward, optimizer, send and receive work.

use std::collections::BTreeMap;
use std::path::Path;

use super::error::{Context, Result};
use baton_engine::pipeline::protocol::Span;
use serde_json::{json, Value};

/// The trace JSON for every worker's spans.
pub fn chrome_trace(spans: &BTreeMap<u32, Vec<Span>>) -> Value {
    let mut events = Vec::new();
    for (&worker, list) in spans {
        events.push(
            json!({"name": "process_name", "ph": "M", "pid": worker, "args": {"name": format!("worker {worker}")}}),
        );
        for span in list {
            events.push(json!({
                "name": span.name, "cat": span.category, "ph": "X",
                "ts": span.start_us, "dur": span.duration_us, "pid": worker, "tid": 0,
            }));
        }
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

/// Writes [`chrome_trace`] to `path`.
pub fn write_chrome_trace(path: &Path, spans: &BTreeMap<u32, Vec<Span>>) -> Result<()> {
    let text = serde_json::to_string(&chrome_trace(spans)).what("encoding the timeline")?;
    std::fs::write(path, text).what_with(|| format!("writing the timeline {}", path.display()))
}

/// Colour of a span category in the SVG picture.
fn colour(category: &str, name: &str) -> &'static str {
    match category {
        "forward" => "#4e79a7",
        "backward" => "#f28e2b",
        "optimizer" => "#59a14f",
        "recompute" => "#b07aa1",
        "eval" => "#76b7b2",
        "send" if name.starts_with("ship") => "#e15759",
        _ => "#bab0ac",
    }
}

/// An SVG picture of the timeline: one row per worker, one box per span
/// (forward blue, backward orange, optimizer green, recomputed forwards
/// purple, evaluation teal, shipping red, messages grey). A migration shows as a red box where a row ends and the other
/// rows' boxes grow.
pub fn svg(spans: &BTreeMap<u32, Vec<Span>>) -> String {
    let end_us = spans.values().flatten().map(|s| s.start_us + s.duration_us).max().unwrap_or(1).max(1);
    let (width, row, left) = (1200.0, 40.0, 90.0);
    let scale = (width - left - 10.0) / end_us as f64;
    let height = 40.0 + row * spans.len() as f64;
    let mut out = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='12'>\n\
         <text x='{left}' y='16'>baton timeline: {:.1} ms (forward blue, backward orange, optimizer green, recompute purple, shipping red)</text>\n",
        end_us as f64 / 1e3
    );
    for (i, (worker, list)) in spans.iter().enumerate() {
        let y = 30.0 + row * i as f64;
        out.push_str(&format!("<text x='4' y='{}'>worker {worker}</text>\n", y + row / 2.0));
        for span in list {
            let (x, w) = (left + span.start_us as f64 * scale, (span.duration_us as f64 * scale).max(0.5));
            let fill = colour(&span.category, &span.name);
            out.push_str(&format!(
                "<rect x='{x:.2}' y='{y}' width='{w:.2}' height='{}' fill='{fill}'><title>{}</title></rect>\n",
                row - 8.0,
                span.name
            ));
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_row_per_worker_and_a_box_per_span() {
        let span =
            |name: &str, cat: &str| Span { name: name.into(), category: cat.into(), start_us: 3, duration_us: 5 };
        let spans = BTreeMap::from([(0, vec![span("0F0", "forward")]), (1, vec![span("ship g1", "send")])]);
        let picture = svg(&spans);
        assert_eq!(picture.matches("<rect").count(), 2);
        assert!(picture.contains("worker 1") && picture.contains("#e15759"));
    }

    #[test]
    fn spans_become_complete_events_per_worker() {
        let span = |name: &str, cat: &str, start_us| Span {
            name: name.into(),
            category: cat.into(),
            start_us,
            duration_us: 5,
        };
        let spans = BTreeMap::from([(0, vec![span("0F0", "forward", 10)]), (1, vec![span("1B0", "backward", 20)])]);
        let trace = chrome_trace(&spans);
        let events = trace["traceEvents"].as_array().unwrap();
        assert_eq!(events.len(), 4);
        let b = events.iter().find(|e| e["name"] == "1B0").unwrap();
        assert_eq!((b["ph"].as_str(), b["pid"].as_u64(), b["ts"].as_u64()), (Some("X"), Some(1), Some(20)));
        assert_eq!(b["cat"], "backward");
    }
}
