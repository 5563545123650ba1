//! Optimizers with PyTorch semantics, with per-parameter state that migrates
//! with its parameter. Updates run on the optimizer's [`Backend`]; the
//! state stays host data, so it migrates the same from any device.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use baton_kernels::optim::{AdamConfig, SgdConfig};

use crate::device::{self, Backend};
use crate::{Error, Result, Tensor};

/// Which optimizer, with its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    Sgd(SgdConfig),
    Adam(AdamConfig),
}

/// State of one parameter: the number of updates applied and the buffers
/// (SGD: `[momentum]` once momentum is used; Adam: `[exp_avg, exp_avg_sq]`).
#[derive(Clone, Debug, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct OptState {
    pub step: u64,
    pub buffers: Vec<Vec<f32>>,
}

/// An optimizer and the state of every parameter it updated.
#[derive(Clone, Debug)]
pub struct Optimizer {
    pub config: OptimizerConfig,
    state: BTreeMap<String, OptState>,
    backend: Backend,
}

impl Optimizer {
    /// An optimizer whose updates run on the process's default backend
    /// ([`device::process_default`]).
    pub fn new(config: OptimizerConfig) -> Self {
        Optimizer { config, state: BTreeMap::new(), backend: device::process_default() }
    }

    /// The same optimizer with its updates running on `backend`.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The backend the updates run on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Applies one update of `param` (called `name`) with `grad`.
    pub fn update(&mut self, name: &str, param: &mut Tensor, grad: &Tensor) -> Result<()> {
        if param.shape() != grad.shape() {
            return Err(Error::Shape(format!(
                "gradient of {name} has shape {:?}, parameter {:?}",
                grad.shape(),
                param.shape()
            )));
        }
        let state = self.state.entry(name.to_string()).or_default();
        match &self.config {
            OptimizerConfig::Sgd(cfg) => {
                let first = state.step == 0;
                if cfg.momentum != 0.0 && state.buffers.is_empty() {
                    state.buffers.push(vec![0.0; param.len()]);
                }
                let buffer = state.buffers.first_mut().map_or(&mut [][..], |b| &mut b[..]);
                self.backend.sgd_step(param.values_mut()?, grad.values()?, buffer, first, cfg)?;
            }
            OptimizerConfig::Adam(cfg) => {
                if state.buffers.is_empty() {
                    state.buffers = vec![vec![0.0; param.len()], vec![0.0; param.len()]];
                }
                let [m, v] = &mut state.buffers[..] else {
                    return Err(Error::Optimizer(format!("Adam state of {name} must hold two buffers")));
                };
                self.backend.adam_step(param.values_mut()?, grad.values()?, m, v, state.step + 1, cfg)?;
            }
        }
        state.step += 1;
        Ok(())
    }

    /// The state of `name`, if it was ever updated here.
    pub fn state(&self, name: &str) -> Option<&OptState> {
        self.state.get(name)
    }

    /// Removes and returns the state of `name` (to ship it with its parameter).
    pub fn take_state(&mut self, name: &str) -> Option<OptState> {
        self.state.remove(name)
    }

    /// Installs state received with a parameter.
    pub fn insert_state(&mut self, name: impl Into<String>, state: OptState) {
        self.state.insert(name.into(), state);
    }
}

impl FromStr for OptimizerConfig {
    type Err = Error;

    /// Parses `sgd:lr=0.05,momentum=0.9` or `adam:lr=1e-3,beta1=0.9,beta2=0.999,eps=1e-8`.
    fn from_str(text: &str) -> Result<Self> {
        let (name, args) = text.split_once(':').unwrap_or((text, ""));
        let args = parse_args(args)?;
        match name.trim() {
            "sgd" => {
                let keys = ["lr", "momentum", "dampening", "weight_decay", "nesterov"];
                let get = |k: &str, d: f32| args.get(k).copied().unwrap_or(d);
                check_keys(&args, &keys, "sgd")?;
                Ok(OptimizerConfig::Sgd(SgdConfig {
                    lr: require(&args, "lr", "sgd")?,
                    momentum: get("momentum", 0.0),
                    dampening: get("dampening", 0.0),
                    weight_decay: get("weight_decay", 0.0),
                    nesterov: get("nesterov", 0.0) != 0.0,
                }))
            }
            "adam" => {
                let keys = ["lr", "beta1", "beta2", "eps", "weight_decay"];
                let get = |k: &str, d: f32| args.get(k).copied().unwrap_or(d);
                check_keys(&args, &keys, "adam")?;
                Ok(OptimizerConfig::Adam(AdamConfig {
                    lr: get("lr", 1e-3),
                    beta1: get("beta1", 0.9),
                    beta2: get("beta2", 0.999),
                    eps: get("eps", 1e-8),
                    weight_decay: get("weight_decay", 0.0),
                }))
            }
            other => Err(Error::Optimizer(format!(
                "unknown optimizer `{other}`; use sgd:lr=..,momentum=.. or adam:lr=..,beta1=..,beta2=..,eps=.."
            ))),
        }
    }
}

fn parse_args(args: &str) -> Result<BTreeMap<String, f32>> {
    let mut out = BTreeMap::new();
    for pair in args.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) =
            pair.split_once('=').ok_or_else(|| Error::Optimizer(format!("`{pair}` is not key=value")))?;
        let value = match value.trim() {
            "true" => 1.0,
            "false" => 0.0,
            v => v.parse::<f32>().map_err(|_| Error::Optimizer(format!("`{key}` has a non-numeric value `{v}`")))?,
        };
        if !value.is_finite() {
            return Err(Error::Optimizer(format!("`{key}` must be finite")));
        }
        out.insert(key.trim().to_string(), value);
    }
    Ok(out)
}

fn check_keys(args: &BTreeMap<String, f32>, allowed: &[&str], name: &str) -> Result<()> {
    match args.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(Error::Optimizer(format!("{name} has no option `{k}` (options: {})", allowed.join(", ")))),
        None => Ok(()),
    }
}

fn require(args: &BTreeMap<String, f32>, key: &str, name: &str) -> Result<f32> {
    args.get(key).copied().ok_or_else(|| Error::Optimizer(format!("{name} needs `{key}=`")))
}

impl fmt::Display for OptimizerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptimizerConfig::Sgd(c) => write!(
                f,
                "sgd:lr={},momentum={},dampening={},weight_decay={},nesterov={}",
                c.lr, c.momentum, c.dampening, c.weight_decay, c.nesterov
            ),
            OptimizerConfig::Adam(c) => write!(
                f,
                "adam:lr={},beta1={},beta2={},eps={},weight_decay={}",
                c.lr, c.beta1, c.beta2, c.eps, c.weight_decay
            ),
        }
    }
}
