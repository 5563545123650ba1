//! Optimizers with PyTorch semantics, with per-parameter state that migrates
//! with its parameter. Updates run on the optimizer's [`Backend`]; the
//! state stays host data, so it migrates the same from any device.
//!
//! Hyper-parameters that PyTorch's constructors refuse are refused when a
//! configuration is parsed ([`OptimizerConfig::check`]), naming the option.
//! The learning rate of each update comes from the optimizer's
//! [`LrSchedule`] for the step being applied.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use baton_kernels::optim::{AdamConfig, SgdConfig};

use crate::device::{self, Backend, Call, Out};
use crate::lr_schedule::LrSchedule;
use crate::{Error, Result, Tensor};

mod into;

/// Which optimizer, with its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// `torch.optim.SGD`.
    Sgd(SgdConfig),
    /// `torch.optim.Adam` (L2 weight decay).
    Adam(AdamConfig),
    /// `torch.optim.AdamW` (decoupled weight decay).
    AdamW(AdamConfig),
}

impl OptimizerConfig {
    /// The base learning rate.
    pub fn lr(&self) -> f32 {
        match self {
            OptimizerConfig::Sgd(c) => c.lr,
            OptimizerConfig::Adam(c) | OptimizerConfig::AdamW(c) => c.lr,
        }
    }

    /// The same configuration with learning rate `lr`.
    pub fn with_lr(mut self, lr: f32) -> Self {
        match &mut self {
            OptimizerConfig::Sgd(c) => c.lr = lr,
            OptimizerConfig::Adam(c) | OptimizerConfig::AdamW(c) => c.lr = lr,
        }
        self
    }

    /// Refuses what PyTorch's constructors refuse (`lr < 0`, `momentum < 0`,
    /// `weight_decay < 0`, nesterov without momentum or with dampening,
    /// betas outside [0, 1)), plus `eps <= 0` and non-finite values, naming
    /// the option.
    pub fn check(&self) -> Result<()> {
        match self {
            OptimizerConfig::Sgd(c) => {
                let name = "sgd";
                finite(name, &[("lr", c.lr), ("momentum", c.momentum), ("dampening", c.dampening)])?;
                finite(name, &[("weight_decay", c.weight_decay)])?;
                at_least_zero(name, &[("lr", c.lr), ("momentum", c.momentum), ("weight_decay", c.weight_decay)])?;
                if c.nesterov && (c.momentum <= 0.0 || c.dampening != 0.0) {
                    return Err(Error::Optimizer(format!(
                        "sgd `nesterov` needs momentum > 0 and dampening = 0 (got momentum={}, dampening={}), \
                         as torch.optim.SGD requires",
                        c.momentum, c.dampening
                    )));
                }
                Ok(())
            }
            OptimizerConfig::Adam(c) => check_adam("adam", c),
            OptimizerConfig::AdamW(c) => check_adam("adamw", c),
        }
    }
}

fn check_adam(name: &str, c: &AdamConfig) -> Result<()> {
    finite(name, &[("lr", c.lr), ("beta1", c.beta1), ("beta2", c.beta2), ("eps", c.eps)])?;
    finite(name, &[("weight_decay", c.weight_decay)])?;
    at_least_zero(name, &[("lr", c.lr), ("weight_decay", c.weight_decay)])?;
    for (key, beta) in [("beta1", c.beta1), ("beta2", c.beta2)] {
        if !(0.0..1.0).contains(&beta) {
            return Err(Error::Optimizer(format!(
                "{name} `{key}`={beta} must be in [0, 1), as torch.optim refuses it"
            )));
        }
    }
    if c.eps <= 0.0 {
        return Err(Error::Optimizer(format!(
            "{name} `eps`={} must be > 0 (it keeps the update's denominator from 0)",
            c.eps
        )));
    }
    Ok(())
}

fn finite(name: &str, values: &[(&str, f32)]) -> Result<()> {
    match values.iter().find(|(_, v)| !v.is_finite()) {
        Some((key, v)) => Err(Error::Optimizer(format!("{name} `{key}`={v} must be finite"))),
        None => Ok(()),
    }
}

fn at_least_zero(name: &str, values: &[(&str, f32)]) -> Result<()> {
    match values.iter().find(|(_, v)| *v < 0.0) {
        Some((key, v)) => Err(Error::Optimizer(format!("{name} `{key}`={v} must be >= 0, as torch.optim refuses it"))),
        None => Ok(()),
    }
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
    /// The learning rate of each step (constant unless set).
    pub lr_schedule: LrSchedule,
    state: BTreeMap<String, OptState>,
    /// Buffers kept in device memory, by parameter (a device backend's;
    /// `state`'s buffers are then empty).
    resident: BTreeMap<String, Vec<Tensor>>,
    backend: Backend,
}

impl Optimizer {
    /// An optimizer whose updates run on the process's default backend
    /// ([`device::process_default`]).
    pub fn new(config: OptimizerConfig) -> Self {
        Optimizer {
            config,
            lr_schedule: LrSchedule::default(),
            state: BTreeMap::new(),
            resident: BTreeMap::new(),
            backend: device::process_default(),
        }
    }

    /// The same optimizer with learning rates from `schedule`.
    pub fn with_lr_schedule(mut self, schedule: LrSchedule) -> Self {
        self.lr_schedule = schedule;
        self
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

    /// Applies the update of step `step` (from 0) to `param` (called
    /// `name`) with `grad`, at the learning rate the schedule gives that step.
    pub fn update(&mut self, step: u32, name: &str, param: &mut Tensor, grad: &Tensor) -> Result<()> {
        if param.shape() != grad.shape() {
            return Err(Error::Shape(format!(
                "gradient of {name} has shape {:?}, parameter {:?}",
                grad.shape(),
                param.shape()
            )));
        }
        let config = self.config_at(step);
        let done = self.state.get(name).map_or(0, |s| s.step);
        let (call, count) = match &config {
            OptimizerConfig::Sgd(cfg) => (Call::Sgd { cfg: *cfg, first: done == 0 }, 1),
            OptimizerConfig::Adam(cfg) | OptimizerConfig::AdamW(cfg) => {
                let decoupled = matches!(config, OptimizerConfig::AdamW(_));
                (Call::Adam { cfg: *cfg, step: done + 1, decoupled }, 2)
            }
        };
        let empty_momentum = matches!(&config, OptimizerConfig::Sgd(c) if c.momentum == 0.0);
        let buffers = self.take_buffers(name, param, count, empty_momentum)?;
        let taken = std::mem::replace(param, Tensor::scalar(0.0));
        let outs = std::iter::once(taken).chain(buffers).map(Out::Init).collect();
        let mut outs = self.backend.launch(&call, &[grad.operand()], outs)?.into_iter();
        *param = outs.next().ok_or_else(|| Error::Internal("an optimizer call returned no parameter".into()))?;
        let buffers: Vec<Tensor> = if empty_momentum { Vec::new() } else { outs.collect() };
        let state = self.state.entry(name.to_string()).or_default();
        state.step += 1;
        if self.backend.device().is_device() {
            self.resident.insert(name.to_string(), buffers);
        } else {
            state.buffers = buffers.into_iter().map(|t| t.into_values().map(|(_, v)| v)).collect::<Result<_>>()?;
        }
        Ok(())
    }

    /// The configuration of step `step`'s update (its scheduled learning rate).
    fn config_at(&self, step: u32) -> OptimizerConfig {
        self.config.with_lr(self.lr_schedule.lr(self.config.lr(), step))
    }

    /// The `count` state buffers of `name` as tensors on the backend:
    /// resident ones, else the host state (uploaded once, counted), else
    /// zeros where the parameter lives. SGD without momentum gets one empty
    /// buffer.
    fn take_buffers(&mut self, name: &str, param: &Tensor, count: usize, empty: bool) -> Result<Vec<Tensor>> {
        if empty {
            return Ok(vec![crate::device::zeros_like(&param.view(), &[0])?]);
        }
        if let Some(resident) = self.resident.remove(name) {
            return Ok(resident);
        }
        let host = self.state.get_mut(name).map(|s| std::mem::take(&mut s.buffers)).unwrap_or_default();
        if host.is_empty() {
            return (0..count).map(|_| crate::device::zeros_like(&param.view(), param.shape())).collect();
        }
        if host.len() != count || host.iter().any(|b| b.len() != param.len()) {
            return Err(Error::Optimizer(format!(
                "the state of {name} holds {} buffers of lengths {:?}; this optimizer needs {count} of {}",
                host.len(),
                host.iter().map(Vec::len).collect::<Vec<_>>(),
                param.len()
            )));
        }
        host.into_iter().map(|b| self.backend.adopt(Tensor::new(param.shape().to_vec(), b)?)).collect()
    }

    /// Downloads resident state into the host [`OptState`]s (counted), so
    /// that [`Optimizer::state`] shows it.
    pub fn state_to_host(&mut self) -> Result<()> {
        for (name, buffers) in std::mem::take(&mut self.resident) {
            let host = buffers.iter().map(|t| t.to_host()?.into_values().map(|(_, v)| v)).collect::<Result<_>>()?;
            self.state.entry(name).or_default().buffers = host;
        }
        Ok(())
    }

    /// The state of `name`, if it was ever updated here. On a device the
    /// buffers stay resident and this shows them empty until
    /// [`Optimizer::state_to_host`].
    pub fn state(&self, name: &str) -> Option<&OptState> {
        self.state.get(name)
    }

    /// Removes and returns the state of `name` (to ship it with its parameter).
    /// Resident buffers are downloaded (counted); a failed download leaves
    /// them out (an error of the device, reported by the next update).
    pub fn take_state(&mut self, name: &str) -> Option<OptState> {
        if let Some(resident) = self.resident.remove(name) {
            let host: Result<Vec<Vec<f32>>> =
                resident.iter().map(|t| t.to_host()?.into_values().map(|(_, v)| v)).collect();
            if let (Ok(host), Some(state)) = (host, self.state.get_mut(name)) {
                state.buffers = host;
            }
        }
        self.state.remove(name)
    }

    /// Installs state received with a parameter.
    pub fn insert_state(&mut self, name: impl Into<String>, state: OptState) {
        let name = name.into();
        self.resident.remove(&name);
        self.state.insert(name, state);
    }
}

impl FromStr for OptimizerConfig {
    type Err = Error;

    /// Parses `sgd:lr=0.05,momentum=0.9`, `adam:lr=1e-3,beta1=0.9,beta2=0.999,eps=1e-8`
    /// or `adamw:lr=1e-3,...,weight_decay=0.01`, with PyTorch's defaults,
    /// and refuses what [`OptimizerConfig::check`] refuses.
    fn from_str(text: &str) -> Result<Self> {
        let config = parse_config(text)?;
        config.check()?;
        Ok(config)
    }
}

fn parse_config(text: &str) -> Result<OptimizerConfig> {
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
        name @ ("adam" | "adamw") => {
            let keys = ["lr", "beta1", "beta2", "eps", "weight_decay"];
            let get = |k: &str, d: f32| args.get(k).copied().unwrap_or(d);
            check_keys(&args, &keys, name)?;
            // torch.optim.AdamW's default weight decay is 0.01, Adam's 0.
            let decoupled = name == "adamw";
            let cfg = AdamConfig {
                lr: get("lr", 1e-3),
                beta1: get("beta1", 0.9),
                beta2: get("beta2", 0.999),
                eps: get("eps", 1e-8),
                weight_decay: get("weight_decay", if decoupled { 0.01 } else { 0.0 }),
            };
            Ok(if decoupled { OptimizerConfig::AdamW(cfg) } else { OptimizerConfig::Adam(cfg) })
        }
        other => Err(Error::Optimizer(format!(
            "unknown optimizer `{other}`; use sgd:lr=..,momentum=.., adam:lr=..,beta1=..,beta2=..,eps=.. \
             or adamw:lr=..,weight_decay=.."
        ))),
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
            OptimizerConfig::Adam(c) | OptimizerConfig::AdamW(c) => write!(
                f,
                "{}:lr={},beta1={},beta2={},eps={},weight_decay={}",
                if matches!(self, OptimizerConfig::AdamW(_)) { "adamw" } else { "adam" },
                c.lr,
                c.beta1,
                c.beta2,
                c.eps,
                c.weight_decay
            ),
        }
    }
}
