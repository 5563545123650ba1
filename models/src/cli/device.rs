//! `--device` of `baton train`: one device for every local worker, or a
//! comma list with one per worker (`cuda:0,cpu,cpu`), checked before any
//! training starts.

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{bail, ensure, Context};
use baton_engine::{Backend, Device};

/// The devices of a run's workers, in worker order. Invariant: not empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceList(Vec<Device>);

impl DeviceList {
    /// `cpu`, `cuda[:N]`, or a comma list of them (clap's value parser).
    pub fn parse(text: &str) -> Result<DeviceList, String> {
        let devices = text
            .split(',')
            .map(|d| d.trim().parse::<Device>().map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DeviceList(devices))
    }

    /// The devices, one for all workers or one per worker.
    pub fn devices(&self) -> &[Device] {
        &self.0
    }

    /// The device of a run in this process (one worker, no joiners).
    pub fn single(&self) -> Device {
        self.0[0]
    }

    /// Checks that there is one device, or one per worker (`workers`
    /// started at launch plus `joiners`), and opens each CUDA device once,
    /// so that a missing GPU stops the run here, with the flag's name.
    pub fn check(&self, workers: usize, joiners: usize) -> anyhow::Result<()> {
        let n = workers + joiners;
        ensure!(
            self.0.len() == 1 || self.0.len() == n,
            "--device {self}: {} devices for {n} worker(s); give one for all or one per worker \
             (workers started by --join included)",
            self.0.len()
        );
        let flag = if self.0.len() == 1 { "--device".to_string() } else { format!("--device {self}") };
        for &device in self.0.iter().collect::<BTreeSet<_>>() {
            Backend::open(device).with_context(|| flag.clone())?;
        }
        Ok(())
    }

    /// Refuses the flag where this process starts no worker.
    pub fn refuse_remote(flag: Option<&DeviceList>) -> anyhow::Result<()> {
        if let Some(list) = flag {
            bail!(
                "--device {list}: workers started by hand choose their device themselves \
                 (`baton worker --device cpu|cuda[:N]`)"
            );
        }
        Ok(())
    }
}

impl Default for DeviceList {
    fn default() -> Self {
        DeviceList(vec![Device::Cpu])
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.0.iter().map(Device::to_string).collect();
        f.write_str(&names.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_device_or_a_list() {
        assert_eq!(DeviceList::parse("cuda").unwrap().devices(), [Device::Cuda(0)]);
        let list = DeviceList::parse("cuda:1, cpu,cpu").unwrap();
        assert_eq!(list.devices(), [Device::Cuda(1), Device::Cpu, Device::Cpu]);
        assert_eq!(list.to_string(), "cuda:1,cpu,cpu");
        assert!(DeviceList::parse("cpu,,cpu").unwrap_err().contains("``"));
        assert!(DeviceList::parse("cpu,tpu").unwrap_err().contains("`tpu` is unknown"));
    }

    #[test]
    fn the_count_must_fit_the_workers() {
        let list = DeviceList::parse("cpu,cpu").unwrap();
        assert!(list.check(2, 0).is_ok());
        assert!(DeviceList::default().check(3, 1).is_ok());
        let err = list.check(3, 0).unwrap_err().to_string();
        assert!(err.contains("--device cpu,cpu: 2 devices for 3 worker(s)"), "{err}");
    }
}
