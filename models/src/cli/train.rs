//! `baton train`: one-process training from a spec, weights and data files
//! (or seeded defaults), saving the final weights and an optional report.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{bail, ensure, Context};
use baton_engine::eval::{EvalPlan, EvalPoint};
use baton_engine::pipeline::coordinator::{CrashRecord, FaultTolerance, JobPlan, MigrationRecord};
use baton_engine::pipeline::protocol::PlannedNotice;
use baton_engine::pipeline::protocol::Span;
use baton_engine::pipeline::{Layout, Partition, ScheduleKind};
use baton_engine::{init, Backend, Batch, LrSchedule, LrShape, Model, Optimizer, OptimizerConfig, ParamStore, Trainer};
use baton_models::cluster::{launch_local_on, run_coordinator, CoordinatorOptions, LocalJob};
use baton_models::{io, spec};
use clap::{Args, ValueEnum};

use super::device::DeviceList;
use super::preempt;
use super::preflight;
use super::progress::Progress;
use super::report::{self, Report};

mod checks;
mod data_steps;
mod resume;

use checks::{check_devices, check_memory, check_single_process, kernel_isa};
use data_steps::{data_file, training_data};

/// Pipeline schedule of a multi-worker run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Schedule {
    /// One forward, one backward: bounded activation memory.
    #[value(name = "1f1b")]
    OneFOneB,
    /// All forwards, then all backwards.
    #[value(name = "gpipe")]
    Gpipe,
}

impl Schedule {
    fn kind(self) -> ScheduleKind {
        match self {
            Schedule::OneFOneB => ScheduleKind::OneFOneB,
            Schedule::Gpipe => ScheduleKind::Gpipe,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Schedule::OneFOneB => "1f1b",
            Schedule::Gpipe => "gpipe",
        }
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Model: `mlp12`, a JSON spec file or inline JSON. Default: the `spec`
    /// stored in the --init file's metadata if there is one, else mlp12.
    #[arg(long, value_name = "SPEC|mlp12")]
    model: Option<String>,
    /// Initial weights (safetensors, PyTorch names). Default: seeded init.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,
    /// Training data (safetensors `data.x`, `data.y`). Default: seeded synthetic data.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Optimizer steps. Default: every step in --data, or 10 for synthetic data.
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Micro-batches per step (M).
    #[arg(long, value_name = "M", default_value_t = 4)]
    microbatches: usize,
    /// `sgd:lr=..,momentum=..`, `adam:lr=..,beta1=..,beta2=..,eps=..` or
    /// `adamw:lr=..,beta1=..,beta2=..,eps=..,weight_decay=..`.
    #[arg(long, value_name = "SPEC", default_value = "adam:lr=1e-3")]
    optimizer: OptimizerConfig,
    /// Clip each step's gradients to this total norm over every parameter
    /// of every stage (`torch.nn.utils.clip_grad_norm_`), before the update.
    #[arg(long, value_name = "MAX")]
    clip_grad_norm: Option<f32>,
    /// Learning rate per step: `constant`, `cosine:warmup=W,min=LR` or
    /// `linear:warmup=W` (warmup `lr·(s+1)/W`, then decay over the run's steps).
    #[arg(long, value_name = "constant|cosine:warmup=W,min=LR|linear:warmup=W", default_value = "constant")]
    lr_schedule: LrShape,
    /// Worker processes (pipeline stages).
    #[arg(long, value_name = "W", default_value_t = 1)]
    workers: usize,
    /// Pipeline schedule.
    #[arg(long, value_enum, default_value_t = Schedule::OneFOneB)]
    schedule: Schedule,
    /// Preempt a worker: `WORKER@STEP:ACTIONS[,grace=DURATION]` (repeatable).
    #[arg(long, value_name = "WORKER@STEP:ACTIONS[,grace=DURATION]")]
    preempt: Vec<String>,
    /// A worker joins once step STEP reported LOSSES micro-batch losses:
    /// `STEP[:LOSSES]` (repeatable; default LOSSES 0, at the step's start).
    #[arg(long, value_name = "STEP[:LOSSES]")]
    join: Vec<String>,
    /// Rows per step of synthetic data (default 32); with --data it must match the file.
    #[arg(long, value_name = "B")]
    batch: Option<usize>,
    /// Seed of the default initial weights, synthetic data and dropout masks.
    #[arg(long, value_name = "S", default_value_t = 0)]
    seed: u64,
    /// Kernel threads (default: BATON_THREADS or all cores). Results do not depend on it.
    #[arg(long, value_name = "T")]
    threads: Option<usize>,
    /// Where to write the final weights (safetensors).
    #[arg(long, value_name = "OUT.safetensors")]
    save: PathBuf,
    /// Where to write the run report (JSON).
    #[arg(long, value_name = "OUT.json")]
    report: Option<PathBuf>,
    /// Precision of saved tensors shipped in migrations: f32 keeps the run
    /// bit-identical; bf16 halves their bytes when grace is tight, and the
    /// run is then no longer bit-identical (the report says so).
    #[arg(long, value_name = "f32|bf16", default_value = "f32", value_parser = ["f32", "bf16"])]
    ship_dtype: String,
    /// Keep an in-memory replica of a neighbour's layers, so a worker lost
    /// without notice costs only the step in progress (redone from the
    /// replicas); `off` makes such a loss fail the run.
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = ["on", "off"])]
    replicas: String,
    /// A worker silent this long (no heartbeat, no message) is lost.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = baton_models::runtime::duration)]
    peer_timeout: std::time::Duration,
    /// Where to write the timeline of every worker's forward, backward,
    /// optimizer, send and receive spans (Chrome trace JSON, for Perfetto).
    /// Implies worker processes even with --workers 1.
    #[arg(long, value_name = "OUT.json")]
    timeline: Option<PathBuf>,
    /// Where the workers compute: `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or a
    /// comma list with one per worker, joiners included (`cuda:0,cpu,cpu`).
    /// Checked before training starts. Default: cpu.
    #[arg(long, value_name = "cpu|cuda[:N][,..]", value_parser = DeviceList::parse)]
    device: Option<DeviceList>,
    /// The CPU kernel path of each local worker process: one for all, or a
    /// comma list by worker number (`avx512,avx2,avx2`), joiners included;
    /// a mixed fleet on one machine. Every path gives the same bits.
    /// Default: the coordinator's (`BATON_KERNEL_ISA`, else the best).
    #[arg(long, value_name = "avx512|avx2|generic[,..]", value_delimiter = ',', value_parser = kernel_isa)]
    kernel_isa: Vec<baton_kernels::Isa>,
    /// Write the job's admin identity (`admin.pem`, `admin.key.pem`,
    /// `ca.pem`) and `coordinator.addr` into DIR once the coordinator listens,
    /// so that `baton preempt --admin-dir DIR --worker N` can preempt a worker
    /// of this running job. Replaces those files of an earlier job. Needs
    /// --workers 2 or more.
    #[arg(long, value_name = "DIR")]
    admin_dir: Option<PathBuf>,
    #[command(flatten)]
    eval: super::eval::EvalArgs,
    /// Write checkpoints into DIR (a safetensors file per stage, a
    /// manifest, a `latest` pointer): at the end, every --checkpoint-every
    /// steps, and on SIGINT/SIGTERM. Workers on other machines must see DIR
    /// (shared storage). Implies worker processes even with --workers 1.
    #[arg(long, value_name = "DIR")]
    checkpoint_dir: Option<PathBuf>,
    /// Steps between checkpoints (default: only at the end).
    #[arg(long, value_name = "N", requires = "checkpoint_dir")]
    checkpoint_every: Option<u32>,
    /// Continue the run checkpointed in DIR up to --steps (total), on any
    /// number of workers: bit-identical to an uninterrupted run.
    #[arg(long, value_name = "DIR")]
    resume: Option<PathBuf>,
}

/// The model to train and how to name it in the saved file and report.
struct Chosen {
    /// What the user asked for (or where the spec came from).
    label: String,
    /// Spec text that `spec::load` accepts, stored in the saved weights' metadata.
    spec_text: String,
    model: Model,
}

/// Where the workers of a pipeline run come from.
pub enum Launch<'a> {
    /// Worker processes started here, on loopback, with an ephemeral CA.
    Local,
    /// Workers started by hand that connect to this node.
    Remote(&'a baton_transport::Node),
}

/// Runs `baton train`.
pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    run_with(args, Launch::Local)
}

/// Runs a training job with workers from `launch`.
pub fn run_with(args: TrainArgs, launch: Launch<'_>) -> anyhow::Result<()> {
    check_single_process(&args)?;
    ensure!(
        args.admin_dir.is_none() || matches!(launch, Launch::Local),
        "--admin-dir is for `baton train`; preempt a worker of `baton coordinator` with \
         `baton preempt --coordinator ADDR --cluster-dir DIR` (the cluster's `admin` certificate)"
    );
    let devices = check_devices(&args, &launch)?;
    let data_file = args.data.as_deref().map(data_file);
    let eval_file = args.eval.input_file();
    let inputs = preflight::files(&[
        ("--init", args.init.as_deref()),
        ("--data", data_file.as_deref()),
        ("--eval-data", eval_file.as_deref()),
    ]);
    let outputs = preflight::files(&[
        ("--save", Some(&args.save)),
        ("--report", args.report.as_deref()),
        ("--timeline", args.timeline.as_deref()),
        ("--plot", args.eval.plot.as_deref()),
    ]);
    preflight::check_files(&inputs, &outputs)?;
    super::set_threads(args.threads)?;
    let resumed = resume::load(&args)?;
    let chosen = choose_model(&args, resumed.as_ref())?;
    check_memory(&args, &chosen.model)?;
    let first_step = resumed.as_ref().map_or(0, resume::Resumed::next_step);
    let params = match &resumed {
        Some(r) => r.loaded.params.clone(),
        None => initial_params(&args, &chosen.model)?,
    };
    let from = (first_step, resumed.as_ref().and_then(resume::Resumed::tokens));
    let (batches, tokens) = training_data(&args, &chosen.model, from)?;
    let (rows, total) = (batches[0].rows(), first_step as usize + batches.len());
    let settings = resume::settings(&args, &chosen.spec_text, rows, total);
    if let Some(r) = &resumed {
        resume::check_fits(r, &settings, &chosen.model, total)?;
    }
    let checkpoints = (resume::plan(&args, resumed.as_ref())?, resume::store(&args, settings, &tokens)?);
    let lr_schedule = lr_schedule(&args, total)?;
    let eval_plan = args.eval.plan(&chosen.model, total, rows)?;
    ensure!(
        args.microbatches >= 1 && args.microbatches <= rows,
        "--microbatches {}: a batch of {rows} rows can be split into 1..={rows} micro-batches",
        args.microbatches
    );
    let (label, spec_text, layers) = (chosen.label, chosen.spec_text, chosen.model.layers.len());
    let joins =
        args.join.iter().map(|j| preempt::parse_join(j).context("--join")).collect::<anyhow::Result<Vec<_>>>()?;
    preempt::check_joins(&joins, total, args.microbatches)?;
    let notices =
        args.preempt.iter().map(|p| preempt::parse(p).context("--preempt")).collect::<anyhow::Result<Vec<_>>>()?;
    preempt::check(&notices, args.workers, &joins, total, args.microbatches)?;
    resume::check_scripted(first_step, &notices, &joins)?;
    eprintln!(
        "training {label} ({layers} layers, {} parameters) for {} steps, batch {rows}, M={}, {}, lr {}, device {devices}",
        params.iter().map(|(_, t)| t.len()).sum::<usize>(),
        batches.len(),
        args.microbatches,
        args.optimizer,
        args.lr_schedule
    );
    let remote = matches!(launch, Launch::Remote(_));
    ensure!(
        !remote || args.kernel_isa.is_empty(),
        "--kernel-isa sets the kernel path of local worker processes; a hand-started worker takes BATON_KERNEL_ISA"
    );
    let pipeline = args.workers > 1 || args.timeline.is_some() || !joins.is_empty() || !args.kernel_isa.is_empty();
    let pipeline = pipeline || args.checkpoint_dir.is_some() || args.resume.is_some();
    let run = if pipeline || remote {
        let scripted = (notices, joins, checkpoints);
        let job = (chosen.model, params, lr_schedule, eval_plan);
        train_pipeline(&args, &spec_text, job, &batches, scripted, (launch, &devices))?
    } else {
        let model = chosen.model.with_backend(Backend::open(devices.single()).context("--device")?);
        train_in_process(&args, model, (params, lr_schedule, eval_plan), &batches)?
    };
    if let Some(path) = &args.eval.plot {
        super::plot::write(path, &format!("baton train {label}"), &run.losses, &run.evals)?;
        eprintln!("wrote loss curve {}", path.display());
    }
    save(&args, &spec_text, &run.params, total, rows)?;
    if let Some(path) = &args.timeline {
        baton_models::cluster::timeline::write_chrome_trace(path, &run.spans)?;
        eprintln!("wrote timeline {}", path.display());
    }
    if let Some(path) = &args.report {
        build_report(&args, Summary { label, layers, rows }, run).write(path)?;
        eprintln!("wrote report {}", path.display());
    }
    Ok(())
}

/// What a run produced, wherever it ran.
struct RunResult {
    params: ParamStore,
    losses: Vec<f32>,
    counters: baton_engine::train::Counters,
    partitions: Vec<Layout>,
    migrations: Vec<MigrationRecord>,
    spans: BTreeMap<u32, Vec<Span>>,
    /// Micro-batch losses counted.
    microbatch_losses: u64,
    /// With --clip-grad-norm: every step's total gradient norm.
    grad_norms: Vec<f32>,
    /// With --eval-data: every evaluation.
    evals: Vec<EvalPoint>,
    wall_seconds: f64,
    /// Losses without notice survived, and the steps redone for them.
    crashes: (Vec<CrashRecord>, u32),
}

/// One line about a finished migration, for the progress output.
pub fn describe_migration(m: &MigrationRecord) -> String {
    let who = match (m.leaving.is_empty(), m.joining.is_empty()) {
        (false, true) => format!("worker(s) {:?} left", m.leaving),
        (true, false) => format!("worker(s) {:?} joined", m.joining),
        _ => format!("worker(s) {:?} left, {:?} joined", m.leaving, m.joining),
    };
    format!(
        "migration to generation {}: {who}; layers {} -> {}; shipped {:.1} KiB in {:.1} ms{}; \
         training resumed {:.1} ms after it began",
        m.generation,
        m.before.describe(),
        m.after.describe(),
        m.bytes.total() as f64 / 1024.0,
        m.ship_time.as_secs_f64() * 1e3,
        match m.bytes.unshipped_segments {
            0 => String::new(),
            left =>
                format!(" ({:.1} KiB of segments left out to recompute: no time to ship them)", left as f64 / 1024.0),
        },
        m.resumed_after.as_secs_f64() * 1e3
    )
}

/// The `--lr-schedule` over a run of `steps` steps, checked against the optimizer's rate.
fn lr_schedule(args: &TrainArgs, steps: usize) -> anyhow::Result<LrSchedule> {
    let steps = u32::try_from(steps).context("too many steps")?;
    LrSchedule::new(args.lr_schedule, steps, args.optimizer.lr()).context("--lr-schedule")
}

fn train_in_process(
    args: &TrainArgs,
    model: Model,
    (params, lr_schedule, eval): (ParamStore, LrSchedule, Option<EvalPlan>),
    batches: &[Batch],
) -> anyhow::Result<RunResult> {
    let layers = model.layers.len() as u32;
    let optimizer = Optimizer::new(args.optimizer).with_lr_schedule(lr_schedule);
    let mut trainer = Trainer::new(model.with_seed(args.seed), params, optimizer)
        .context("the initial weights do not fit the model")?
        .with_clip_grad_norm(args.clip_grad_norm)
        .context("--clip-grad-norm")?;
    let (losses, evals, wall_seconds) = train_steps(&mut trainer, batches, args.microbatches, eval.as_ref())?;
    Ok(RunResult {
        params: trainer.params,
        losses,
        counters: trainer.counters,
        partitions: vec![Layout { generation: 0, stages: vec![(0, 0..layers)] }],
        migrations: Vec::new(),
        spans: BTreeMap::new(),
        microbatch_losses: (batches.len() * args.microbatches) as u64,
        grad_norms: trainer.grad_norms,
        evals,
        wall_seconds,
        crashes: (Vec::new(), 0),
    })
}

/// Scripted preemptions (worker, notice) and joins (step, losses), and the
/// checkpoint plan with where checkpoints are committed.
type Scripted = (
    Vec<(u32, PlannedNotice)>,
    Vec<(u32, u32)>,
    (baton_engine::pipeline::checkpoint::CheckpointPlan, Option<baton_models::checkpoint::DiskStore>),
);

/// Runs the job on `--workers` worker processes over QUIC on loopback.
fn train_pipeline(
    args: &TrainArgs,
    spec_text: &str,
    (model, params, lr_schedule, eval): (Model, ParamStore, LrSchedule, Option<EvalPlan>),
    batches: &[Batch],
    (notices, joins, (checkpoint, store)): Scripted,
    (launch, devices): (Launch<'_>, &DeviceList),
) -> anyhow::Result<RunResult> {
    let plan = JobPlan {
        spec: spec_text.to_string(),
        optimizer: args.optimizer,
        lr_schedule,
        schedule: args.schedule.kind(),
        micro_batches: args.microbatches,
        workers: args.workers,
        costs: model.layers.iter().map(|l| l.cost()).collect(),
        params,
        batches: batches.to_vec(),
        join_timeout: std::time::Duration::from_secs(60),
        notices,
        joins,
        ship_bf16: args.ship_dtype == "bf16",
        clip_grad_norm: args.clip_grad_norm,
        seed: args.seed,
        eval,
        checkpoint,
        faults: FaultTolerance { replicas: args.replicas == "on", peer_timeout: args.peer_timeout },
    };
    let partition = Partition::balanced(&plan.costs, plan.workers).context("--workers")?;
    let noun = if args.workers == 1 { "process" } else { "processes" };
    eprintln!("pipeline on {} worker {noun} ({}): layers {}", args.workers, args.schedule.name(), partition.describe());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let progress = std::cell::RefCell::new(Progress::new(plan.checkpoint.first_step as usize + batches.len()));
    let rows = batches[0].rows();
    let mut on_step = |step: u32, loss: f32| progress.borrow_mut().step(step as usize, loss, rows);
    let mut on_eval = |step: u32, loss: f32| progress.borrow_mut().eval(step as usize, loss);
    let mut on_migration = |m: &MigrationRecord| eprintln!("{}", describe_migration(m));
    let outcome = match launch {
        Launch::Local => {
            let exe = std::env::current_exe().context("locating the baton binary to start workers")?;
            let threads_per_worker = args.threads.unwrap_or((cores / args.workers).max(1));
            let on_migration = &mut on_migration;
            let admin_dir = args.admin_dir.as_deref();
            let kernel_isas = args.kernel_isa.clone();
            let job = LocalJob {
                plan,
                exe: &exe,
                threads_per_worker,
                on_step: &mut on_step,
                on_migration,
                on_eval: Some(&mut on_eval),
                admin_dir,
                kernel_isas,
                checkpoints: store,
            };
            launch_local_on(job, devices.devices())?
        }
        Launch::Remote(node) => {
            let options = CoordinatorOptions {
                on_step: &mut on_step,
                on_migration: &mut on_migration,
                on_eval: Some(&mut on_eval),
                children: &mut Vec::new(),
                spawn: None,
                checkpoints: store,
            };
            run_coordinator(node, plan, options)?
        }
    };
    let wall_seconds = progress.into_inner().finish();
    Ok(RunResult {
        params: outcome.params,
        losses: outcome.losses,
        counters: outcome.counters,
        partitions: outcome.partitions,
        migrations: outcome.migrations,
        spans: outcome.spans,
        microbatch_losses: outcome.microbatch_losses,
        crashes: (outcome.crashes, outcome.redone_steps),
        grad_norms: outcome.grad_norms,
        evals: outcome.evals,
        wall_seconds,
    })
}

/// What a finished run reports beyond its arguments.
struct Summary {
    label: String,
    layers: usize,
    rows: usize,
}

fn build_report(args: &TrainArgs, summary: Summary, run: RunResult) -> Report {
    let expected = (run.losses.len() * args.microbatches) as u64;
    let mut counters = report::Counters::new(&run.counters, run.microbatch_losses, expected);
    counters.redone_steps = run.crashes.1;
    Report {
        model: summary.label,
        layers: summary.layers,
        steps: run.losses.len(),
        microbatches: args.microbatches,
        batch: summary.rows,
        optimizer: args.optimizer.to_string(),
        lr_schedule: args.lr_schedule.to_string(),
        workers: args.workers,
        schedule: args.schedule.name().to_string(),
        losses: run.losses,
        ship_dtype: args.ship_dtype.clone(),
        kernel_isa: match &args.kernel_isa[..] {
            [] => baton_kernels::isa::current().to_string(),
            isas => isas.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
        },
        bit_identical_to_uninterrupted: args.ship_dtype == "f32" || run.migrations.is_empty(),
        partitions: Report::partitions(&run.partitions),
        migrations: run.migrations.iter().map(report::Migration::from).collect(),
        crashes: run.crashes.0.iter().map(report::Crash::from).collect(),
        counters,
        grad_norms: run.grad_norms,
        eval: run.evals.iter().map(|e| report::Eval { step: e.step, loss: e.loss }).collect(),
        wall_seconds: run.wall_seconds,
        peak_rss_kib: report::peak_rss_kib(),
    }
}

/// The model from --model, else from the spec in --init's metadata, else mlp12.
fn choose_model(args: &TrainArgs, resumed: Option<&resume::Resumed>) -> anyhow::Result<Chosen> {
    if let (None, Some(text)) = (&args.model, resume::spec_of(resumed)) {
        let model = spec::parse(&text).context("--resume: the `spec` in the checkpoint's manifest")?;
        return Ok(Chosen { label: "spec of the checkpoint".into(), spec_text: text, model });
    }
    if let Some(text) = &args.model {
        let model = spec::load(text).context("--model")?;
        let spec_text = if text.trim() == "mlp12" {
            spec::mlp_json(64, 12)
        } else if text.trim_start().starts_with('{') {
            text.clone()
        } else {
            std::fs::read_to_string(text).with_context(|| format!("--model {text}"))?
        };
        return Ok(Chosen { label: abbreviate(text), spec_text, model });
    }
    if let Some(init) = &args.init {
        let metadata = io::read_metadata(init).context("--init")?;
        if let Some(text) = metadata.get("spec") {
            let model =
                spec::parse(text).with_context(|| format!("--init {}: the `spec` in its metadata", init.display()))?;
            eprintln!("model: the spec stored in {} (pass --model to override)", init.display());
            let label = format!("spec of {}", init.display());
            return Ok(Chosen { label, spec_text: text.clone(), model });
        }
    }
    Ok(Chosen { label: "mlp12".into(), spec_text: spec::mlp_json(64, 12), model: spec::mlp12() })
}

/// A spec argument short enough for a message (inline JSON can be long).
fn abbreviate(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

/// Weights from --init, else seeded from --seed.
fn initial_params(args: &TrainArgs, model: &Model) -> anyhow::Result<ParamStore> {
    match &args.init {
        Some(path) => io::load_params(path, model).context("--init"),
        None => Ok(init::init_params(&model.param_specs(), args.seed)),
    }
}

/// Runs every step (and the evaluations due), reporting progress; returns
/// the losses, the evaluations and the wall seconds.
fn train_steps(
    trainer: &mut Trainer,
    batches: &[Batch],
    micro_batches: usize,
    eval: Option<&EvalPlan>,
) -> anyhow::Result<(Vec<f32>, Vec<EvalPoint>, f64)> {
    let mut progress = Progress::new(batches.len());
    let (mut losses, mut evals) = (Vec::with_capacity(batches.len()), Vec::new());
    for (step, batch) in batches.iter().enumerate() {
        let step_id = u32::try_from(step).context("too many steps")?;
        let loss = trainer.step(step_id, batch, micro_batches).with_context(|| format!("training step {step}"))?;
        progress.step(step, loss, batch.rows());
        losses.push(loss);
        if let Some(point) = super::eval::in_process(eval, &trainer.model, &trainer.params, step_id)? {
            progress.eval(step, point.loss);
            evals.push(point);
        }
    }
    Ok((losses, evals, progress.finish()))
}

/// Writes the final weights with the metadata needed to continue or compare.
fn save(args: &TrainArgs, spec_text: &str, params: &ParamStore, steps: usize, batch: usize) -> anyhow::Result<()> {
    let metadata = HashMap::from([
        ("spec".to_string(), spec_text.to_string()),
        ("steps".to_string(), steps.to_string()),
        ("batch".to_string(), batch.to_string()),
        ("microbatches".to_string(), args.microbatches.to_string()),
        ("optimizer".to_string(), args.optimizer.to_string()),
        ("lr_schedule".to_string(), args.lr_schedule.to_string()),
        ("producer".to_string(), format!("baton {}", env!("CARGO_PKG_VERSION"))),
    ]);
    io::save_params(&args.save, params, Some(metadata)).context("--save")?;
    eprintln!("saved final weights to {}", args.save.display());
    Ok(())
}
