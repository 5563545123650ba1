//! Method (c), checkpoint-restart: the leaving worker writes its layers'
//! parameters, optimizer state and the activations that entered them (the
//! tape cannot be written, so the in-flight forwards must run again) to a
//! safetensors file and syncs it; a fresh `baton-bench` process
//! (`baton-bench restart FILE`, hidden) joins the cluster (starts its QUIC
//! node with its certificate and connects to the receiver), reads the file,
//! builds the stage, recomputes the in-flight forwards and reports on stdout.
//!
//! File layout: parameters under their PyTorch names, optimizer buffer k of
//! parameter P as `optimizer.P.k`, micro-batch m's input as `inputs.m`;
//! metadata `spec`, `optimizer`, `first`, `end`, `stage`, `stages`, `step`,
//! `rows` (comma-separated) and `optimizer_steps` (JSON, by parameter).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use baton_engine::pipeline::migrate::Handover;
use baton_engine::pipeline::{ScheduleKind, Stage, StageEvent};
use baton_engine::{OptState, Optimizer, ParamStore, Tensor};
use baton_models::cluster::{net_config, worker_name};
use baton_models::{io, spec};
use baton_transport::{Identity, Node};
use clap::Args;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::fixture::{self, Fixture, LEAVING_POSITION};
use super::links::RESTARTED;

#[derive(Debug, Args)]
pub struct RestartArgs {
    /// A checkpoint written by `baton-bench migrate`.
    #[arg(value_name = "FILE")]
    checkpoint: PathBuf,
    /// Directory holding this worker's certificate (`worker-3`) and the CA's.
    #[arg(long, value_name = "DIR", requires = "connect")]
    cluster_dir: Option<PathBuf>,
    /// Connect to this member before loading.
    #[arg(long, value_name = "ADDR", requires = "cluster_dir")]
    connect: Option<SocketAddr>,
}

/// What the restarted process prints, as one JSON line.
#[derive(Debug, Deserialize, Serialize)]
pub struct ChildReport {
    /// Starting the QUIC node and connecting (0 without `--connect`).
    pub join_ms: f64,
    /// Reading the file and building the stage.
    pub load_ms: f64,
    /// Running the in-flight forwards again.
    pub recompute_ms: f64,
    pub recomputed: u32,
    /// Saved-tensor bytes of the rebuilt tape (equal to what (a) ships).
    pub segment_bytes: u64,
}

/// A worker's layers mid-step, as the checkpoint holds them.
struct Checkpoint {
    spec: String,
    optimizer: String,
    layers: Range<u32>,
    position: (u32, u32),
    step: u32,
    rows: Vec<u32>,
    params: Vec<(String, Tensor)>,
    states: Vec<(String, OptState)>,
    inputs: Vec<(u32, Tensor)>,
}

/// Writes what `handover` carries except its tape, plus `inputs`, to
/// `path`, and syncs the file to disk. Returns the file's size.
pub fn write(path: &Path, fixture: &Fixture, handover: Handover, inputs: Vec<(u32, Tensor)>) -> anyhow::Result<u64> {
    let (step, rows) = handover.step.context("the handover names no step in progress")?;
    let layers = handover.layers.iter().map(|l| l.layer);
    let (first, end) = (layers.clone().min().unwrap_or(0), layers.max().map_or(0, |l| l + 1));
    let mut checkpoint = Checkpoint {
        spec: fixture.spec.clone(),
        optimizer: fixture.optimizer.to_string(),
        layers: first..end,
        position: LEAVING_POSITION,
        step,
        rows,
        params: Vec::new(),
        states: Vec::new(),
        inputs,
    };
    for layer in handover.layers {
        checkpoint.params.extend(layer.params);
        checkpoint.states.extend(layer.optimizer);
    }
    checkpoint.save(path)?;
    let file = std::fs::File::open(path).with_context(|| format!("opening {} to sync it", path.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))?;
    Ok(file.metadata()?.len())
}

impl Checkpoint {
    fn save(self, path: &Path) -> anyhow::Result<()> {
        let steps: BTreeMap<&str, u64> = self.states.iter().map(|(n, s)| (n.as_str(), s.step)).collect();
        let rows: Vec<String> = self.rows.iter().map(u32::to_string).collect();
        let metadata: HashMap<String, String> = [
            ("spec", self.spec.clone()),
            ("optimizer", self.optimizer.clone()),
            ("first", self.layers.start.to_string()),
            ("end", self.layers.end.to_string()),
            ("stage", self.position.0.to_string()),
            ("stages", self.position.1.to_string()),
            ("step", self.step.to_string()),
            ("rows", rows.join(",")),
            ("optimizer_steps", serde_json::to_string(&steps)?),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let mut tensors: ParamStore = self.params.into_iter().collect();
        for (name, state) in self.states {
            for (k, buffer) in state.buffers.into_iter().enumerate() {
                tensors.insert(format!("optimizer.{name}.{k}"), Tensor::new(vec![buffer.len()], buffer)?);
            }
        }
        for (micro, input) in self.inputs {
            tensors.insert(format!("inputs.{micro}"), input);
        }
        io::save_params(path, &tensors, Some(metadata))?;
        Ok(())
    }

    /// Reads a checkpoint; every missing or malformed entry is an error naming it.
    fn load(path: &Path) -> anyhow::Result<Checkpoint> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let bad = |e: safetensors::SafeTensorError| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display());
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(bad)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &str| meta.get(key).with_context(|| format!("{}: metadata `{key}` is missing", path.display()));
        let number = |key: &str| -> anyhow::Result<u32> {
            get(key)?.parse().with_context(|| format!("{}: metadata `{key}` is not a number", path.display()))
        };
        let rows = get("rows")?.split(',').map(str::parse).collect::<Result<Vec<u32>, _>>();
        let steps: BTreeMap<String, u64> = serde_json::from_str(get("optimizer_steps")?)
            .with_context(|| format!("{}: metadata `optimizer_steps`", path.display()))?;
        let mut checkpoint = Checkpoint {
            spec: get("spec")?.clone(),
            optimizer: get("optimizer")?.clone(),
            layers: number("first")?..number("end")?,
            position: (number("stage")?, number("stages")?),
            step: number("step")?,
            rows: rows.with_context(|| format!("{}: metadata `rows`", path.display()))?,
            params: Vec::new(),
            states: Vec::new(),
            inputs: Vec::new(),
        };
        let st = SafeTensors::deserialize(&bytes).map_err(bad)?;
        checkpoint.take_tensors(path, &st, &steps)?;
        Ok(checkpoint)
    }

    /// Sorts the file's tensors into parameters, optimizer buffers and inputs.
    fn take_tensors(&mut self, path: &Path, st: &SafeTensors<'_>, steps: &BTreeMap<String, u64>) -> anyhow::Result<()> {
        let mut buffers: BTreeMap<String, BTreeMap<usize, Vec<f32>>> = BTreeMap::new();
        for (name, view) in st.iter() {
            if view.dtype() != Dtype::F32 {
                bail!("{}: tensor `{name}` has dtype {}, expected F32", path.display(), view.dtype());
            }
            let data: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let tensor = Tensor::new(view.shape().to_vec(), data)?;
            if let Some(micro) = name.strip_prefix("inputs.") {
                let micro = micro.parse().with_context(|| format!("{}: tensor `{name}`", path.display()))?;
                self.inputs.push((micro, tensor));
            } else if let Some(rest) = name.strip_prefix("optimizer.") {
                let (param, k) =
                    rest.rsplit_once('.').with_context(|| format!("{}: tensor `{name}`", path.display()))?;
                let k = k.parse().with_context(|| format!("{}: tensor `{name}`", path.display()))?;
                buffers.entry(param.to_string()).or_default().insert(k, tensor.into_values()?.1);
            } else {
                self.params.push((name.to_string(), tensor));
            }
        }
        for (param, buffers) in buffers {
            let step =
                *steps.get(&param).with_context(|| format!("{}: no optimizer step for {param}", path.display()))?;
            self.states.push((param, OptState { step, buffers: buffers.into_values().collect() }));
        }
        self.inputs.sort_by_key(|(micro, _)| *micro);
        Ok(())
    }

    /// The stage of the restarted worker, at the start of the interrupted
    /// step, with the inputs of the in-flight micro-batches waiting.
    fn into_stage(self) -> anyhow::Result<Stage> {
        let model = Arc::new(spec::parse(&self.spec).context("the checkpoint's model spec")?);
        let params: ParamStore = self.params.into_iter().collect();
        let prefixes: Vec<String> = self.layers.clone().map(|l| format!("layers.{l}.")).collect();
        for p in model.param_specs().iter().filter(|p| prefixes.iter().any(|x| p.name.starts_with(x))) {
            let found = params.get(&p.name).with_context(|| format!("the checkpoint lacks parameter {}", p.name))?;
            if found.shape() != p.shape {
                bail!(
                    "parameter {} has shape {:?} in the checkpoint, the model says {:?}",
                    p.name,
                    found.shape(),
                    p.shape
                );
            }
        }
        let mut optimizer = Optimizer::new(self.optimizer.parse().context("the checkpoint's optimizer")?);
        for (name, state) in self.states {
            optimizer.insert_state(name, state);
        }
        let (step, first) = (self.step, self.layers.start);
        let mut stage = Stage::new(model, self.layers, self.position, ScheduleKind::Gpipe, params, optimizer)?;
        stage.handle(StageEvent::StepStart { step, rows: self.rows, inputs: vec![], targets: vec![] })?;
        for (micro, tensor) in self.inputs {
            stage.handle(StageEvent::Activation { step, micro, layer: first, tensor })?;
        }
        Ok(stage)
    }
}

/// Runs `baton-bench restart FILE` (the restarted worker).
pub fn run(args: RestartArgs) -> anyhow::Result<()> {
    let begin = Instant::now();
    let _node = match (&args.cluster_dir, args.connect) {
        (Some(dir), Some(addr)) => Some(join(dir, addr)?),
        _ => None,
    };
    let start = Instant::now();
    let checkpoint = Checkpoint::load(&args.checkpoint)?;
    let (layers, in_flight) = (checkpoint.layers.clone(), checkpoint.inputs.len());
    let mut stage = checkpoint.into_stage()?;
    let loaded = Instant::now();
    let recomputed = fixture::recompute(&mut stage)?;
    let done = Instant::now();
    if recomputed as usize != in_flight {
        bail!("recomputed {recomputed} forwards, the checkpoint holds {in_flight} in-flight micro-batches");
    }
    let layers: Vec<u32> = layers.collect();
    let segment_bytes = stage.release(&layers)?.bytes().segments;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
    let report = ChildReport {
        join_ms: ms(start - begin),
        load_ms: ms(loaded - start),
        recompute_ms: ms(done - loaded),
        recomputed,
        segment_bytes,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Starts this worker's node with its certificate from `dir` and connects
/// to `addr` (TLS both ways, then the hello).
fn join(dir: &Path, addr: SocketAddr) -> anyhow::Result<Node> {
    let name = worker_name(RESTARTED);
    let identity = Identity::load(dir, &name).with_context(|| format!("loading {name}'s certificate"))?;
    let node = Node::start(([127, 0, 0, 1], 0).into(), identity, net_config()).context("starting the QUIC node")?;
    node.connect(addr).with_context(|| format!("connecting to {addr}"))?;
    Ok(node)
}
