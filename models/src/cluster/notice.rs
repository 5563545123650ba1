//! Where a worker's preemption notices come from: SIGTERM, and the cloud
//! metadata services (AWS IMDSv2 spot `instance-action`, GCP `preempted`,
//! Azure Scheduled Events). Each source runs on its own thread and sends the
//! grace in milliseconds on one channel, which the worker's I/O loop
//! ([`super::WorkerOptions::notices`]) reads at its next action boundary.
//!
//! Each source delivers at most one notice. A metadata service that answers
//! something unreadable is logged and polled again, never fatal: a broken
//! poller must not take down a worker that is training fine.

use std::time::{Duration, Instant};

use super::error::{ensure, Context, Error};
use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;
use time::format_description::well_known::{Rfc2822, Rfc3339};
use time::OffsetDateTime;

/// Default metadata endpoint of AWS (IMDS) and Azure (IMDS).
pub const AWS_METADATA: &str = "http://169.254.169.254";
/// Default metadata endpoint of GCP.
pub const GCP_METADATA: &str = "http://metadata.google.internal";
/// Default metadata endpoint of Azure.
pub const AZURE_METADATA: &str = "http://169.254.169.254";

/// Grace announced on SIGTERM unless configured (AWS's spot warning).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(120);
/// AWS's two-minute spot warning, used when its notice's time is unreadable.
pub const AWS_GRACE: Duration = Duration::from_secs(120);
/// GCP gives a preemptible VM about 30 s and says only that it is preempted.
pub const GCP_GRACE: Duration = Duration::from_secs(30);
/// Azure's minimum notice for a Spot eviction, used without a `NotBefore`.
pub const AZURE_GRACE: Duration = Duration::from_secs(30);

/// Lifetime asked for an IMDSv2 token (the maximum, 6 h); renewed before it ends.
const AWS_TOKEN_TTL: Duration = Duration::from_secs(21_600);
/// One request to a metadata service gives up after this, so a hung
/// endpoint delays the next poll, never stops polling.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Metadata answers are a few hundred bytes; anything bigger is not one.
const MAX_BODY: u64 = 64 * 1024;

/// Which notice sources a worker runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoticeConfig {
    /// Grace announced when SIGTERM arrives.
    pub grace: Duration,
    /// Whether SIGTERM is a notice (then it no longer ends the process).
    pub sigterm: bool,
    /// Base URL of the AWS instance metadata service, to poll it.
    pub aws: Option<String>,
    /// Base URL of the GCP metadata server, to poll it.
    pub gcp: Option<String>,
    /// Base URL of the Azure instance metadata service, to poll it.
    pub azure: Option<String>,
    /// Time between two polls of one metadata service.
    pub poll_interval: Duration,
}

impl Default for NoticeConfig {
    fn default() -> Self {
        NoticeConfig {
            grace: DEFAULT_GRACE,
            sigterm: true,
            aws: None,
            gcp: None,
            azure: None,
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// Starts every source `config` names and returns the channel they share.
/// Each message is one notice's grace in milliseconds.
pub fn spawn_sources(config: &NoticeConfig) -> super::Result<Receiver<u64>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    if config.sigterm {
        watch_sigterm(config.grace, tx.clone())?;
    }
    let clouds = [(Cloud::Aws, &config.aws), (Cloud::Gcp, &config.gcp), (Cloud::Azure, &config.azure)];
    for (cloud, base) in clouds {
        if let Some(base) = base {
            let poller = Poller::new(cloud, base)?;
            let (every, tx) = (config.poll_interval, tx.clone());
            std::thread::Builder::new()
                .name(format!("notice-{}", cloud.name()))
                .spawn(move || poller.run(every, &tx))
                .what_with(|| format!("starting the {} metadata poller", cloud.name()))?;
        }
    }
    Ok(rx)
}

/// Makes SIGTERM a notice of `grace`: the first one sends it on `tx`, later
/// ones are ignored, because the worker must go on shipping its layers
/// (the SIGKILL at the end of the grace is what ends it). The handler is
/// installed before this returns, so a SIGTERM after that never kills.
#[cfg(unix)]
pub fn watch_sigterm(grace: Duration, tx: Sender<u64>) -> super::Result<()> {
    use signal_hook::consts::SIGTERM;
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM]).what("installing the SIGTERM handler")?;
    let grace_ms = millis(grace);
    std::thread::Builder::new()
        .name("notice-sigterm".into())
        .spawn(move || {
            let mut noticed = false;
            for _ in signals.forever() {
                if std::mem::replace(&mut noticed, true) {
                    tracing::warn!("SIGTERM again: ignored while the layers are handed over");
                    continue;
                }
                tracing::warn!(grace_ms, "SIGTERM: preemption notice");
                tx.send(grace_ms).ok();
            }
        })
        .what("starting the SIGTERM watcher")?;
    Ok(())
}

/// Signals are a Unix notion: elsewhere only the metadata pollers exist.
#[cfg(not(unix))]
pub fn watch_sigterm(_grace: Duration, _tx: Sender<u64>) -> super::Result<()> {
    tracing::warn!("SIGTERM notices need a Unix system; only metadata pollers run here");
    Ok(())
}

/// A cloud whose metadata service announces preemption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Gcp,
    Azure,
}

impl Cloud {
    /// The name used in log lines and thread names.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Aws => "AWS",
            Cloud::Gcp => "GCP",
            Cloud::Azure => "Azure",
        }
    }
}

/// What one poll of a metadata service found.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// The machine will be taken away after this grace.
    Notice(Duration),
    /// No notice (yet).
    Nothing,
    /// An answer that cannot be read: logged as a warning, polled again.
    Malformed(String),
    /// No usable answer (connection error, timeout, unexpected status):
    /// logged at debug, polled again.
    Unreachable(String),
}

/// Polls one metadata service until it announces a notice.
struct Poller {
    cloud: Cloud,
    base: String,
    agent: ureq::Agent,
    /// The IMDSv2 session token and when it was issued (AWS only).
    token: Option<(String, Instant)>,
}

impl Poller {
    fn new(cloud: Cloud, base: &str) -> super::Result<Poller> {
        let base = base.trim_end_matches('/').to_string();
        let what = || format!("{} metadata URL `{base}`", cloud.name());
        ensure!(base.starts_with("http://"), "{}: must start with http:// (metadata services are plain HTTP)", what());
        base.parse::<ureq::http::Uri>().map_err(|e| Error::Config(format!("{}: {e}", what())))?;
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            // Link-local metadata must never go through an HTTP proxy.
            .proxy(None)
            .build()
            .into();
        Ok(Poller { cloud, base, agent, token: None })
    }

    /// Polls every `every` until a notice, sends its grace on `tx` and stops.
    fn run(mut self, every: Duration, tx: &Sender<u64>) {
        let cloud = self.cloud.name();
        tracing::info!(cloud, url = %self.base, "polling the metadata service for preemption notices");
        let mut last_warning = None;
        loop {
            match self.poll() {
                Poll::Notice(grace) => {
                    tracing::warn!(cloud, grace_ms = millis(grace), "preemption notice from the metadata service");
                    tx.send(millis(grace)).ok();
                    return;
                }
                Poll::Nothing => {}
                // A service stuck on one bad answer warns once, not every poll.
                Poll::Malformed(why) if last_warning.as_ref() == Some(&why) => {
                    tracing::debug!(cloud, %why, "unreadable metadata answer again; ignored")
                }
                Poll::Malformed(why) => {
                    tracing::warn!(cloud, %why, "unreadable metadata answer; ignored");
                    last_warning = Some(why);
                }
                Poll::Unreachable(why) => tracing::debug!(cloud, %why, "metadata service not reached; retrying"),
            }
            std::thread::sleep(every);
        }
    }

    /// One poll. A notice's grace is measured from when its answer
    /// arrived (not from when the request left), so it never overstates the
    /// time left.
    fn poll(&mut self) -> Poll {
        let now = OffsetDateTime::now_utc;
        match self.cloud {
            Cloud::Aws => self.poll_aws(),
            Cloud::Gcp => match self.get("/computeMetadata/v1/instance/preempted", ("Metadata-Flavor", "Google")) {
                Ok((200, body)) => gcp_notice(&body),
                Ok((status, _)) => Poll::Unreachable(format!("HTTP {status}")),
                Err(e) => Poll::Unreachable(e),
            },
            Cloud::Azure => match self.get("/metadata/scheduledevents?api-version=2020-07-01", ("Metadata", "true")) {
                Ok((200, body)) => azure_notice(&body, now()),
                Ok((status, _)) => Poll::Unreachable(format!("HTTP {status}")),
                Err(e) => Poll::Unreachable(e),
            },
        }
    }

    /// IMDSv2: a session token from a PUT, then the spot action with it. A
    /// refused token (expired, or the service restarted) is renewed at once.
    fn poll_aws(&mut self) -> Poll {
        for _attempt in 0..2 {
            let token = match self.aws_token() {
                Ok(token) => token,
                Err(why) => return Poll::Unreachable(why),
            };
            match self.get("/latest/meta-data/spot/instance-action", ("X-aws-ec2-metadata-token", &token)) {
                Ok((404, _)) => return Poll::Nothing,
                Ok((200, body)) => return aws_notice(&body, OffsetDateTime::now_utc()),
                Ok((401, _)) => self.token = None,
                Ok((status, _)) => return Poll::Unreachable(format!("HTTP {status}")),
                Err(e) => return Poll::Unreachable(e),
            }
        }
        Poll::Unreachable("the IMDSv2 token was refused twice".into())
    }

    /// The current IMDSv2 token, fetched when missing or near its end.
    fn aws_token(&mut self) -> Result<String, String> {
        if let Some((token, issued)) = &self.token {
            if issued.elapsed() < AWS_TOKEN_TTL - Duration::from_secs(600) {
                return Ok(token.clone());
            }
        }
        let response = self
            .agent
            .put(format!("{}/latest/api/token", self.base))
            .header("X-aws-ec2-metadata-token-ttl-seconds", AWS_TOKEN_TTL.as_secs().to_string())
            .send_empty();
        let token = match read(response)? {
            (200, body) if !body.trim().is_empty() => body.trim().to_string(),
            (200, _) => return Err("an empty IMDSv2 token".into()),
            (status, _) => return Err(format!("IMDSv2 token request: HTTP {status}")),
        };
        self.token = Some((token.clone(), Instant::now()));
        Ok(token)
    }

    fn get(&self, path: &str, (name, value): (&str, &str)) -> Result<(u16, String), String> {
        read(self.agent.get(format!("{}{path}", self.base)).header(name, value).call())
    }
}

/// The status and body (lossily decoded: garbage bytes are a malformed
/// answer, not an error) of a response.
fn read(response: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<(u16, String), String> {
    let mut response = response.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.body_mut().with_config().limit(MAX_BODY).read_to_vec().map_err(|e| e.to_string())?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// AWS `spot/instance-action`: `{"action": "terminate", "time": RFC 3339}`.
/// `stop` and `hibernate` take the machine away too.
pub fn aws_notice(body: &str, now: OffsetDateTime) -> Poll {
    #[derive(Deserialize)]
    struct InstanceAction {
        action: String,
        time: Option<String>,
    }
    let notice: InstanceAction = match serde_json::from_str(body) {
        Ok(notice) => notice,
        Err(e) => return Poll::Malformed(format!("instance-action is not the expected JSON ({e}): {}", excerpt(body))),
    };
    if !matches!(notice.action.as_str(), "terminate" | "stop" | "hibernate") {
        return Poll::Malformed(format!("unknown instance action `{}`", notice.action));
    }
    match notice.time.as_deref().map(|t| OffsetDateTime::parse(t.trim(), &Rfc3339)) {
        Some(Ok(at)) => Poll::Notice(until(at, now)),
        other => {
            let time = notice.time.as_deref().unwrap_or("(none)");
            let why = other.and_then(Result::err).map_or("missing".to_string(), |e| e.to_string());
            tracing::warn!(time, %why, grace_ms = millis(AWS_GRACE), "AWS notice without a readable time; assuming AWS's two minutes");
            Poll::Notice(AWS_GRACE)
        }
    }
}

/// GCP `instance/preempted`: `TRUE` once the VM is being preempted.
pub fn gcp_notice(body: &str) -> Poll {
    match body.trim() {
        "TRUE" => Poll::Notice(GCP_GRACE),
        "FALSE" => Poll::Nothing,
        _ => Poll::Malformed(format!("preempted is neither TRUE nor FALSE: {}", excerpt(body))),
    }
}

/// Azure Scheduled Events: a `Preempt` event is a notice, due at its
/// `NotBefore` (RFC 1123); other event types (reboots, freezes) are not.
pub fn azure_notice(body: &str, now: OffsetDateTime) -> Poll {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Document {
        events: Vec<Event>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Event {
        event_type: String,
        #[serde(default)]
        not_before: Option<String>,
    }
    let document: Document = match serde_json::from_str(body) {
        Ok(document) => document,
        Err(e) => {
            return Poll::Malformed(format!("scheduled events are not the expected JSON ({e}): {}", excerpt(body)))
        }
    };
    let Some(event) = document.events.iter().find(|e| e.event_type == "Preempt") else {
        return Poll::Nothing;
    };
    // An empty NotBefore means the event is already under way.
    let not_before = event.not_before.as_deref().map(str::trim).filter(|t| !t.is_empty());
    match not_before.map(|t| OffsetDateTime::parse(t, &Rfc2822)) {
        Some(Ok(at)) => Poll::Notice(until(at, now)),
        Some(Err(e)) => {
            tracing::warn!(not_before, %e, "Azure Preempt event with an unreadable NotBefore; assuming 30 s");
            Poll::Notice(AZURE_GRACE)
        }
        None => Poll::Notice(AZURE_GRACE),
    }
}

/// Time from `now` to `at`, zero if `at` has passed.
fn until(at: OffsetDateTime, now: OffsetDateTime) -> Duration {
    Duration::try_from(at - now).unwrap_or(Duration::ZERO)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The start of a body, for a log line.
fn excerpt(body: &str) -> String {
    let body = body.trim();
    match body.char_indices().nth(80) {
        Some((end, _)) => format!("`{}`...", &body[..end]),
        None => format!("`{body}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &Rfc3339).unwrap()
    }

    #[test]
    fn aws_actions_are_notices_due_at_their_time() {
        let now = at("2026-11-23T07:08:00Z");
        for action in ["terminate", "stop", "hibernate"] {
            let body = format!(r#"{{"action": "{action}", "time": "2026-11-23T07:10:00Z"}}"#);
            assert_eq!(aws_notice(&body, now), Poll::Notice(Duration::from_secs(120)), "{action}");
        }
        let past = r#"{"action": "terminate", "time": "2026-11-23T07:00:00Z"}"#;
        assert_eq!(aws_notice(past, now), Poll::Notice(Duration::ZERO));
        for unreadable in [r#"{"action": "stop", "time": "soon"}"#, r#"{"action": "stop"}"#] {
            assert_eq!(aws_notice(unreadable, now), Poll::Notice(AWS_GRACE), "{unreadable}");
        }
        for bad in ["", "{", "<html>", r#"{"time": "2026-11-23T07:10:00Z"}"#, r#"{"action": "dance", "time": "x"}"#] {
            assert!(matches!(aws_notice(bad, now), Poll::Malformed(_)), "{bad}");
        }
    }

    #[test]
    fn gcp_says_true_or_false() {
        assert_eq!(gcp_notice("TRUE"), Poll::Notice(GCP_GRACE));
        assert_eq!(gcp_notice("TRUE\n"), Poll::Notice(GCP_GRACE));
        assert_eq!(gcp_notice("FALSE"), Poll::Nothing);
        for bad in ["MAYBE", "", "true"] {
            assert!(matches!(gcp_notice(bad), Poll::Malformed(_)), "{bad}");
        }
    }

    #[test]
    fn azure_preempt_events_are_notices_others_are_not() {
        let now = at("2026-11-23T07:09:15Z");
        let doc = |events: &str| format!(r#"{{"DocumentIncarnation": 3, "Events": [{events}]}}"#);
        let event = |kind: &str, not_before: &str| {
            format!(
                r#"{{"EventId": "E1", "EventType": "{kind}", "ResourceType": "VirtualMachine", "Resources": ["vm0"], "EventStatus": "Scheduled", "NotBefore": "{not_before}"}}"#
            )
        };
        let preempt = event("Preempt", "Mon, 23 Nov 2026 07:10:00 GMT");
        assert_eq!(azure_notice(&doc(""), now), Poll::Nothing);
        assert_eq!(azure_notice(&doc(&event("Freeze", "Mon, 23 Nov 2026 07:10:00 GMT")), now), Poll::Nothing);
        let both = format!("{},{preempt}", event("Reboot", ""));
        assert_eq!(azure_notice(&doc(&both), now), Poll::Notice(Duration::from_secs(45)));
        assert_eq!(azure_notice(&doc(&event("Preempt", "")), now), Poll::Notice(AZURE_GRACE));
        assert_eq!(azure_notice(&doc(&event("Preempt", "tomorrow")), now), Poll::Notice(AZURE_GRACE));
        let missing = doc(r#"{"EventId": "E2", "EventType": "Preempt"}"#);
        assert_eq!(azure_notice(&missing, now), Poll::Notice(AZURE_GRACE));
        let later = at("2026-11-23T08:00:00Z");
        assert_eq!(azure_notice(&doc(&preempt), later), Poll::Notice(Duration::ZERO));
        for bad in ["", "{}", "[]", r#"{"Events": "none"}"#, "garbage"] {
            assert!(matches!(azure_notice(bad, now), Poll::Malformed(_)), "{bad}");
        }
    }

    #[test]
    fn metadata_urls_must_be_plain_http() {
        assert!(Poller::new(Cloud::Aws, "http://127.0.0.1:8080/").is_ok());
        assert!(Poller::new(Cloud::Gcp, GCP_METADATA).is_ok());
        for bad in ["https://169.254.169.254", "169.254.169.254", "http://exa mple", ""] {
            assert!(Poller::new(Cloud::Azure, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn long_bodies_are_cut_in_log_lines() {
        assert_eq!(excerpt(" short "), "`short`");
        assert!(excerpt(&"é".repeat(200)).ends_with("`..."));
    }
}
