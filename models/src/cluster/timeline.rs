//! The run's timeline as a Chrome trace (open it in Perfetto or
//! chrome://tracing): one process row per worker, one complete event ("X")
//! per span of forward, backward, optimizer, send and receive work.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
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
pub fn write_chrome_trace(path: &Path, spans: &BTreeMap<u32, Vec<Span>>) -> anyhow::Result<()> {
    let text = serde_json::to_string(&chrome_trace(spans))?;
    std::fs::write(path, text).with_context(|| format!("writing the timeline {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

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
