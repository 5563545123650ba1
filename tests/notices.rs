//! Preemption notice sources: fake AWS, GCP and Azure metadata services on
//! loopback (what they answer before, during and after a notice, and what
//! they answer that cannot be read), SIGTERM, and two whole jobs on
//! hand-started `baton worker`s whose worker 1 learns of its preemption from
//! a SIGTERM and from a fake AWS endpoint: the layers move and the weights
//! stay bit-identical to a one-process run.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baton_models::cluster::notice::{spawn_sources, NoticeConfig};
use baton_models::io;
use common::{baton, bit_identical, run_baton_ok};
use crossbeam_channel::Receiver;
use serde_json::Value;
use time::format_description::well_known::{Rfc2822, Rfc3339};
use time::OffsetDateTime;

const POLL: Duration = Duration::from_millis(50);
/// How long a notice may take to arrive once the fake announces it.
const NOTICE_DEADLINE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- fake server

/// One HTTP request as the fake metadata server saw it.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

enum Reply {
    Http(u16, String),
    /// Close the connection without answering (a connection error for the client).
    Hangup,
}

/// A one-connection-at-a-time HTTP/1.1 server on loopback that answers with
/// `handler` and closes each connection after one response.
struct FakeMetadata {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeMetadata {
    fn start(mut handler: impl FnMut(&Request) -> Reply + Send + 'static) -> FakeMetadata {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: a runaway client cannot keep the test busy forever.
            for stream in listener.incoming().take(10_000) {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&mut stream) else { continue };
                log.lock().unwrap().push(request.clone());
                if let Reply::Http(status, body) = handler(&request) {
                    let head = format!(
                        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        reason(status),
                        body.len()
                    );
                    stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes())).ok();
                }
            }
        });
        FakeMetadata { addr, requests, stop, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|r| r.target.starts_with(path)).count()
    }
}

impl Drop for FakeMetadata {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        TcpStream::connect(self.addr).ok();
        if let Some(thread) = self.thread.take() {
            thread.join().ok();
        }
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target) = (first.next()?.to_string(), first.next()?.to_string());
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let request = Request { method, target, headers };
    let length: usize = request.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; length.min(64 * 1024)];
    stream.read_exact(&mut body).ok()?;
    Some(request)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Status",
    }
}

// ------------------------------------------------------------ fake providers

const AWS_ACTION: &str = "/latest/meta-data/spot/instance-action";
const GCP_PREEMPTED: &str = "/computeMetadata/v1/instance/preempted";
const AZURE_EVENTS: &str = "/metadata/scheduledevents";

/// A fake IMDSv2: tokens from PUT (each new one replaces the old), the spot
/// action only with the current token (401 otherwise). A token is refused
/// after `uses` accepted GETs, as an expired one would be. `action(n)` is the
/// answer to the n-th accepted GET.
fn aws(uses: usize, mut action: impl FnMut(usize) -> Reply + Send + 'static) -> impl FnMut(&Request) -> Reply {
    let (mut issued, mut used, mut gets) = (0, 0, 0);
    move |r| match (r.method.as_str(), r.target.as_str()) {
        ("PUT", "/latest/api/token") if r.header("X-aws-ec2-metadata-token-ttl-seconds") == Some("21600") => {
            (issued, used) = (issued + 1, 0);
            Reply::Http(200, format!("token-{issued}"))
        }
        ("PUT", "/latest/api/token") => Reply::Http(400, "missing TTL".into()),
        ("GET", AWS_ACTION) => {
            let current = format!("token-{issued}");
            if issued == 0 || used >= uses || r.header("X-aws-ec2-metadata-token") != Some(current.as_str()) {
                return Reply::Http(401, String::new());
            }
            (used, gets) = (used + 1, gets + 1);
            action(gets - 1)
        }
        _ => Reply::Http(404, String::new()),
    }
}

/// A fake GCP metadata server: `answer(n)` for the n-th request that carries
/// `Metadata-Flavor: Google` (403 without it, as GCP does).
fn gcp(mut answer: impl FnMut(usize) -> Reply + Send + 'static) -> impl FnMut(&Request) -> Reply {
    let mut n = 0;
    move |r| {
        if !r.target.starts_with(GCP_PREEMPTED) {
            return Reply::Http(404, String::new());
        }
        if r.header("Metadata-Flavor") != Some("Google") {
            return Reply::Http(403, "Missing Metadata-Flavor:Google header.".into());
        }
        n += 1;
        answer(n - 1)
    }
}

/// A fake Azure IMDS: `answer(n)` for the n-th request that carries
/// `Metadata: true` and an api-version (400 otherwise).
fn azure(mut answer: impl FnMut(usize) -> Reply + Send + 'static) -> impl FnMut(&Request) -> Reply {
    let mut n = 0;
    move |r| {
        if !r.target.starts_with(AZURE_EVENTS) {
            return Reply::Http(404, String::new());
        }
        if r.header("Metadata") != Some("true") || !r.target.contains("api-version=") {
            return Reply::Http(400, r#"{"error": "Bad request"}"#.into());
        }
        n += 1;
        answer(n - 1)
    }
}

fn aws_action_in(seconds: i64) -> String {
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    format!(r#"{{"action": "terminate", "time": "{}"}}"#, at.replace_nanosecond(0).unwrap().format(&Rfc3339).unwrap())
}

/// Scheduled events with a Preempt `seconds` from now (and a Freeze beside it).
fn azure_preempt_in(seconds: i64) -> String {
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(seconds);
    let not_before = at.format(&Rfc2822).unwrap().replace(" +0000", " GMT");
    format!(
        r#"{{"DocumentIncarnation": 2, "Events": [
            {{"EventId": "F1", "EventType": "Freeze", "ResourceType": "VirtualMachine", "Resources": ["vm0"], "EventStatus": "Scheduled", "NotBefore": "{not_before}"}},
            {{"EventId": "P1", "EventType": "Preempt", "ResourceType": "VirtualMachine", "Resources": ["vm0"], "EventStatus": "Scheduled", "NotBefore": "{not_before}", "Description": "", "EventSource": "Platform", "DurationInSeconds": -1}}]}}"#
    )
}

const AZURE_NO_EVENTS: &str = r#"{"DocumentIncarnation": 1, "Events": []}"#;

fn ok(body: impl Into<String>) -> Reply {
    Reply::Http(200, body.into())
}

fn config(aws: Option<String>, gcp: Option<String>, azure: Option<String>) -> NoticeConfig {
    NoticeConfig { sigterm: false, aws, gcp, azure, poll_interval: POLL, ..NoticeConfig::default() }
}

/// Waits for one notice, checks that no second one follows, returns its grace.
fn one_notice(rx: &Receiver<u64>) -> Duration {
    let grace = rx.recv_timeout(NOTICE_DEADLINE).expect("a notice within the deadline");
    assert!(rx.recv_timeout(POLL * 6).is_err(), "a second notice");
    Duration::from_millis(grace)
}

fn assert_between(grace: Duration, low: Duration, high: Duration) {
    assert!(grace >= low && grace <= high, "grace {grace:?} outside {low:?}..={high:?}");
}

// ---------------------------------------------------------------- pollers

#[test]
fn aws_spot_notice_after_the_token_handshake() {
    let announced = Arc::new(AtomicBool::new(false));
    let flag = announced.clone();
    let server = FakeMetadata::start(aws(usize::MAX, move |n| match n {
        0..3 => Reply::Http(404, "Not Found".into()),
        _ => {
            flag.store(true, Ordering::SeqCst);
            ok(aws_action_in(90))
        }
    }));
    let rx = spawn_sources(&config(Some(server.url()), None, None)).unwrap();
    let grace = one_notice(&rx);
    assert!(announced.load(Ordering::SeqCst), "a notice before the service announced one");
    assert_between(grace, Duration::from_secs(85), Duration::from_secs(90));
    let requests = server.requests();
    let puts: Vec<_> = requests.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 1, "the token is fetched once and reused: {requests:?}");
    let gets: Vec<_> = requests.iter().filter(|r| r.target == AWS_ACTION).collect();
    assert_eq!(gets.len(), 4, "{requests:?}");
    assert!(gets.iter().all(|r| r.header("X-aws-ec2-metadata-token") == Some("token-1")), "{requests:?}");
    // The poller stopped after its notice.
    assert_eq!(server.count(AWS_ACTION), 4);
}

#[test]
fn an_expired_aws_token_is_renewed() {
    // Each token serves two GETs; the third is refused with 401.
    let server =
        FakeMetadata::start(aws(2, |n| if n < 5 { Reply::Http(404, String::new()) } else { ok(aws_action_in(60)) }));
    let rx = spawn_sources(&config(Some(server.url()), None, None)).unwrap();
    assert_between(one_notice(&rx), Duration::from_secs(55), Duration::from_secs(60));
    let puts = server.requests().iter().filter(|r| r.method == "PUT").count();
    assert_eq!(puts, 3, "six accepted GETs need three tokens: {:?}", server.requests());
}

#[test]
fn gcp_preempted_turns_true() {
    let server = FakeMetadata::start(gcp(|n| ok(if n < 3 { "FALSE" } else { "TRUE" })));
    let rx = spawn_sources(&config(None, Some(server.url()), None)).unwrap();
    assert_eq!(one_notice(&rx), Duration::from_secs(30));
    assert_eq!(server.count(GCP_PREEMPTED), 4);
    assert!(server.requests().iter().all(|r| r.header("Metadata-Flavor") == Some("Google")));
}

#[test]
fn azure_preempt_event_among_others() {
    let server = FakeMetadata::start(azure(|n| match n {
        0..2 => ok(AZURE_NO_EVENTS),
        2..4 => {
            ok(r#"{"DocumentIncarnation": 2, "Events": [{"EventId": "R", "EventType": "Reboot", "NotBefore": ""}]}"#)
        }
        _ => ok(azure_preempt_in(45)),
    }));
    let rx = spawn_sources(&config(None, None, Some(server.url()))).unwrap();
    assert_between(one_notice(&rx), Duration::from_secs(40), Duration::from_secs(45));
    assert_eq!(server.count(AZURE_EVENTS), 5);
    let r = &server.requests()[0];
    assert_eq!(r.target, "/metadata/scheduledevents?api-version=2020-07-01");
    assert_eq!(r.header("Metadata"), Some("true"));
}

/// Garbage from each service gives no notice and no panic; a valid notice
/// after it still arrives. The three pollers share one channel and each
/// fake marks when it started announcing.
#[test]
fn malformed_answers_are_ignored_then_a_valid_notice_arrives() {
    let flags: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::new(AtomicBool::new(false))).collect();
    let phase = |flag: &Arc<AtomicBool>, n: usize, no: &str, bad: &str, good: String| {
        let flag = flag.clone();
        match n {
            0..2 => ok(no),
            2..6 => ok(bad),
            _ => {
                flag.store(true, Ordering::SeqCst);
                ok(good)
            }
        }
    };
    let f = flags.clone();
    let aws_server = FakeMetadata::start(aws(usize::MAX, move |n| match n {
        0..2 => Reply::Http(404, String::new()),
        _ => phase(&f[0], n, "", r#"{"action": "terminate", "time": "#, aws_action_in(100)),
    }));
    let f = flags.clone();
    let gcp_server = FakeMetadata::start(gcp(move |n| phase(&f[1], n, "FALSE", "MAYBE", "TRUE".into())));
    let f = flags.clone();
    let azure_server = FakeMetadata::start(azure(move |n| {
        phase(&f[2], n, AZURE_NO_EVENTS, "{\"Events\": [{]}", azure_preempt_in(200))
    }));
    let rx = spawn_sources(&config(Some(aws_server.url()), Some(gcp_server.url()), Some(azure_server.url()))).unwrap();
    let mut graces = Vec::new();
    for _ in 0..3 {
        graces.push(rx.recv_timeout(NOTICE_DEADLINE).expect("three notices"));
        // Whichever notice this was, its service had announced it.
        assert!(flags.iter().filter(|f| f.load(Ordering::SeqCst)).count() >= graces.len(), "a notice from garbage");
    }
    assert!(rx.recv_timeout(POLL * 6).is_err(), "a fourth notice");
    graces.sort_unstable();
    assert_eq!(graces[0], 30_000, "GCP's 30 s");
    assert_between(Duration::from_millis(graces[1]), Duration::from_secs(95), Duration::from_secs(100));
    assert_between(Duration::from_millis(graces[2]), Duration::from_secs(195), Duration::from_secs(200));
    assert!(aws_server.count(AWS_ACTION) >= 7 && gcp_server.count(GCP_PREEMPTED) >= 7);
}

#[test]
fn connection_errors_and_error_statuses_are_retried() {
    let server = FakeMetadata::start(gcp(|n| match n {
        0..3 => Reply::Hangup,
        3..5 => Reply::Http(503, "busy".into()),
        _ => ok("TRUE"),
    }));
    let rx = spawn_sources(&config(None, Some(server.url()), None)).unwrap();
    assert_eq!(one_notice(&rx), Duration::from_secs(30));
    assert_eq!(server.count(GCP_PREEMPTED), 6);
}

#[test]
fn bad_metadata_urls_are_refused_at_start() {
    for (aws, gcp) in [(Some("https://169.254.169.254"), None), (None, Some("metadata.google.internal"))] {
        let c = config(aws.map(String::from), gcp.map(String::from), None);
        let err = spawn_sources(&c).expect_err("a URL that is not plain http").to_string();
        assert!(err.contains("http://"), "{err}");
    }
}

/// The only test of this binary that installs the SIGTERM handler: after
/// `spawn_sources` returns, SIGTERM to this process is a notice, not a kill.
#[cfg(unix)]
#[test]
fn sigterm_is_one_notice_with_the_configured_grace() {
    let c = NoticeConfig { grace: Duration::from_millis(1500), sigterm: true, ..NoticeConfig::default() };
    let rx = spawn_sources(&c).unwrap();
    // SAFETY: kill(2) on our own pid has no memory effects; the handler is installed.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    assert_eq!(rx.recv_timeout(NOTICE_DEADLINE), Ok(1500));
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGTERM) }, 0);
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "a second SIGTERM gave a second notice");
}

// ------------------------------------------------------------- whole jobs

/// Enough steps (~1.5 s) that a notice sent at step 3 always lands mid-job,
/// even on a loaded machine: a poller finds it within a few 20 ms polls.
const STEPS: &str = "600";
const OPTIMIZER: &str = "sgd:lr=0.05";
const JOB_LIMIT: Duration = Duration::from_secs(240);

/// A coordinator and two workers started by hand; killed if the test fails.
struct Job {
    coordinator: Child,
    workers: Vec<Child>,
    /// What the workers wrote on stderr, for failure messages, and the
    /// threads that copy it (done once the worker exited).
    worker_logs: Vec<Arc<Mutex<String>>>,
    log_threads: Vec<JoinHandle<()>>,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Job {
    fn drop(&mut self) {
        for child in std::iter::once(&mut self.coordinator).chain(&mut self.workers) {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Job {
    /// `baton cluster init`, `baton coordinator --workers 2`, then two
    /// `baton worker`s, worker 1 with `worker1_args`.
    fn start(dir: &Path, worker1_args: &[&str]) -> Job {
        let cluster = dir.join("cluster");
        run_baton_ok(&["cluster", "init", cluster.to_str().unwrap(), "--workers", "2"]);
        let mut coordinator = baton()
            .args(["coordinator", "--listen", "127.0.0.1:0", "--workers", "2", "--model", "mlp12"])
            .args(["--steps", STEPS, "--optimizer", OPTIMIZER, "--cluster-dir"])
            .arg(&cluster)
            .arg("--save")
            .arg(dir.join("out.safetensors"))
            .arg("--report")
            .arg(dir.join("report.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = mpsc::channel();
        let pipe = coordinator.stderr.take().unwrap();
        std::thread::spawn(move || BufReader::new(pipe).lines().map_while(Result::ok).for_each(|l| drop(tx.send(l))));
        let mut job = Job {
            coordinator,
            workers: Vec::new(),
            worker_logs: Vec::new(),
            log_threads: Vec::new(),
            stderr,
            seen: Vec::new(),
        };
        let line = job.wait_for_line("coordinator listening on ");
        let addr = line.trim_start_matches("coordinator listening on ").split(';').next().unwrap().to_string();
        for (id, extra) in [(0, &[][..]), (1, worker1_args)] {
            let mut cmd = baton();
            cmd.args(["worker", "--coordinator", &addr, "--id", &id.to_string(), "--threads", "1"])
                .arg("--cluster-dir")
                .arg(&cluster)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            let (log, pipe) = (Arc::new(Mutex::new(String::new())), child.stderr.take().unwrap());
            let sink = log.clone();
            job.log_threads.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let mut text = sink.lock().unwrap();
                    text.push_str(&line);
                    text.push('\n');
                }
            }));
            job.workers.push(child);
            job.worker_logs.push(log);
        }
        job
    }

    /// The coordinator's stderr so far and the workers' (once they exited).
    fn logs(&self) -> String {
        let mut text = format!("coordinator:\n{}", self.seen.join("\n"));
        for (id, log) in self.worker_logs.iter().enumerate() {
            text.push_str(&format!("\nworker {id}:\n{}", log.lock().unwrap()));
        }
        text
    }

    /// Waits (at most [`JOB_LIMIT`]) for a coordinator stderr line starting with `prefix`.
    fn wait_for_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + JOB_LIMIT;
        loop {
            match self.stderr.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!("no `{prefix}` from the coordinator ({e}); {}", self.logs()),
            }
        }
    }

    /// Waits for every process to exit and checks they all succeeded.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + JOB_LIMIT;
        let mut done = [false; 3];
        while done.iter().any(|d| !d) {
            for (i, child) in std::iter::once(&mut self.coordinator).chain(&mut self.workers).enumerate() {
                if let Some(status) = child.try_wait().unwrap() {
                    if !std::mem::replace(&mut done[i], true) {
                        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
                            self.seen.push(line);
                        }
                        let who = if i == 0 { "the coordinator".to_string() } else { format!("worker {}", i - 1) };
                        assert!(status.success(), "{who} failed ({status}); {}", self.logs());
                    }
                }
            }
            assert!(Instant::now() < deadline, "the job ran over {JOB_LIMIT:?}; {}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.log_threads.drain(..).for_each(|t| drop(t.join()));
        self.logs()
    }
}

/// Checks the outcome of a job whose worker 1 was preempted with about `grace`.
fn check_migrated(dir: &Path, stderr: &str, grace: (f64, f64)) {
    let report: Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    let migrations = report["migrations"].as_array().unwrap();
    assert_eq!(migrations.len(), 1, "{stderr}");
    let m = &migrations[0];
    assert_eq!(m["workers"], serde_json::json!([1]), "{m}");
    let announced = m["deadline_ms"].as_f64().unwrap() - m["notice_ms"].as_f64().unwrap();
    assert!(announced >= grace.0 && announced <= grace.1, "grace {announced} ms, expected {grace:?}: {m}");
    assert_eq!(report["counters"]["lost_microbatches"], 0);

    let single = dir.join("single.safetensors");
    let s = single.to_str().unwrap();
    run_baton_ok(&[
        "train",
        "--model",
        "mlp12",
        "--steps",
        STEPS,
        "--optimizer",
        OPTIMIZER,
        "--workers",
        "1",
        "--save",
        s,
    ]);
    let (got, want) =
        (io::load_tensors(&dir.join("out.safetensors"), "").unwrap(), io::load_tensors(&single, "").unwrap());
    assert!(bit_identical(&got, &want), "weights differ from the one-process run");
}

#[cfg(unix)]
#[test]
fn sigterm_to_a_worker_moves_its_layers() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = Job::start(dir.path(), &["--grace", "90s"]);
    job.wait_for_line("step 3/");
    let pid = job.workers[1].id() as libc::pid_t;
    // SAFETY: kill(2) has no memory effects; `pid` is our child, not yet reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stderr = job.finish();
    check_migrated(dir.path(), &stderr, (89_990.0, 90_010.0));
}

#[test]
fn an_aws_notice_to_a_worker_moves_its_layers() {
    let dir = tempfile::tempdir().unwrap();
    let announce = Arc::new(AtomicBool::new(false));
    let go = announce.clone();
    let server = FakeMetadata::start(aws(usize::MAX, move |_| {
        if go.load(Ordering::SeqCst) {
            ok(aws_action_in(100))
        } else {
            Reply::Http(404, String::new())
        }
    }));
    let url = server.url();
    let mut job = Job::start(dir.path(), &["--aws-metadata", &url, "--metadata-poll", "20ms"]);
    job.wait_for_line("step 3/");
    // The worker has polled by now; from here on, the fake announces the notice.
    let polled = server.count(AWS_ACTION);
    announce.store(true, Ordering::SeqCst);
    let stderr = job.finish();
    assert!(polled >= 3, "the worker polled only {polled} times before step 3");
    check_migrated(dir.path(), &stderr, (95_000.0, 100_010.0));
}

#[test]
fn worker_refuses_malformed_notice_flags() {
    for (flag, value) in [("--grace", "soon"), ("--metadata-poll", "0s")] {
        let out = common::run_with_watchdog(
            baton()
                .args(["worker", "--coordinator", "127.0.0.1:9", "--id", "0", "--cluster-dir", "/nonexistent"])
                .args([flag, value]),
            Duration::from_secs(30),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{stderr}");
    }
    let out = common::run_with_watchdog(
        baton()
            .args(["worker", "--coordinator", "127.0.0.1:9", "--id", "0", "--cluster-dir", "/nonexistent"])
            .args(["--aws-metadata", "https://169.254.169.254"]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("http://") && !stderr.contains("panicked"), "{stderr}");
}
