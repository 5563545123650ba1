//! Checks of `baton train`'s options made before any work: the kernel
//! path, single-process limits, devices and the memory a model needs.

use super::*;

/// A kernel path this CPU has.
pub(super) fn kernel_isa(text: &str) -> anyhow::Result<baton_kernels::Isa> {
    let isa: baton_kernels::Isa = text.parse()?;
    isa.check()?;
    Ok(isa)
}

/// Refuses what needs the multi-process runtime, rather than pretending.
pub(super) fn check_single_process(args: &TrainArgs) -> anyhow::Result<()> {
    ensure!(args.workers >= 1, "--workers 0: at least one worker is needed");
    if let Some(max) = args.clip_grad_norm {
        baton_engine::clip::check_max_norm(max).context("--clip-grad-norm")?;
    }
    if !args.preempt.is_empty() && args.workers < 2 && args.join.is_empty() {
        bail!(
            "--preempt needs --workers 2 or more (or a --join): someone must take over the preempted worker's layers"
        );
    }
    if args.admin_dir.is_some() && args.workers < 2 {
        bail!("--admin-dir needs --workers 2 or more: someone must take over a preempted worker's layers");
    }
    Ok(())
}

/// The workers' devices, checked before training (count, and that each
/// can be opened here); refused when the workers are started by hand.
pub(super) fn check_devices(args: &TrainArgs, launch: &Launch<'_>) -> anyhow::Result<DeviceList> {
    if matches!(launch, Launch::Remote(_)) {
        DeviceList::refuse_remote(args.device.as_ref())?;
    }
    let devices = args.device.clone().unwrap_or_default();
    devices.check(args.workers, args.join.len())?;
    Ok(devices)
}

/// Refuses a model too large for this machine before anything is
/// allocated. The batch is --batch (32 for synthetic data; 1 when a --data
/// file decides it, whose own size is checked as it is read).
pub(super) fn check_memory(args: &TrainArgs, model: &Model) -> anyhow::Result<()> {
    let batch = args.batch.unwrap_or(if args.data.is_some() { 1 } else { 32 });
    let synthetic_rows = match args.data {
        Some(_) => 0,
        None => args.steps.unwrap_or(10) as u128 * batch as u128,
    };
    let estimate = preflight::MemoryEstimate::new(model, &args.optimizer, batch, synthetic_rows);
    estimate.check(model, preflight::memory_limit()).context("--model")
}
