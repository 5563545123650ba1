//! AdamW updates and learning-rate schedules against values PyTorch
//! computed: `tests/fixtures/torch_reference.json`, written by
//! `tests/fixtures/make_fixtures.py` with torch.optim.AdamW (foreach=False)
//! and torch.optim.lr_scheduler.LambdaLR.

use baton_engine::{LrSchedule, Optimizer, OptimizerConfig, Tensor};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/torch_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("tests/fixtures/torch_reference.json")).unwrap()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key}"))
}

/// AdamW through `Optimizer` (parsed from its CLI form) for 3 steps:
/// every parameter within 1 ulp-ish of PyTorch's f32 result.
#[test]
fn adamw_matches_torch_over_three_steps() {
    for run in fixture()["adamw"].as_array().unwrap() {
        let spec = format!(
            "adamw:lr={},beta1={},beta2={},eps={},weight_decay={}",
            num(run, "lr") as f32,
            num(run, "beta1") as f32,
            num(run, "beta2") as f32,
            num(run, "eps") as f32,
            num(run, "weight_decay") as f32
        );
        let config: OptimizerConfig = spec.parse().unwrap();
        assert!(matches!(config, OptimizerConfig::AdamW(_)), "{spec}");
        let mut optimizer = Optimizer::new(config);
        let p0 = f32s(&run["param"]);
        let mut p = Tensor::new(vec![p0.len()], p0.clone()).unwrap();
        let grads = run["grads"].as_array().unwrap();
        for (step, (g, want)) in grads.iter().zip(run["after"].as_array().unwrap()).enumerate() {
            let g = Tensor::new(vec![p0.len()], f32s(g)).unwrap();
            optimizer.update(step as u32, "p", &mut p, &g).unwrap();
            for (i, (&got, want)) in p.values().unwrap().iter().zip(f32s(want)).enumerate() {
                let tol = 2.0 * f32::EPSILON * want.abs().max(1e-3);
                assert!((got - want).abs() <= tol, "{spec} step {step} [{i}]: baton {got}, torch {want}");
            }
        }
    }
}

/// `adamw` defaults are torch.optim.AdamW's (weight_decay 0.01).
#[test]
fn adamw_defaults_are_torchs() {
    let config: OptimizerConfig = "adamw".parse().unwrap();
    assert_eq!(config.to_string(), "adamw:lr=0.001,beta1=0.9,beta2=0.999,eps=0.00000001,weight_decay=0.01");
    let adam: OptimizerConfig = "adam".parse().unwrap();
    assert!(adam.to_string().ends_with("weight_decay=0"), "{adam}");
}

/// `LrSchedule::lr_f64` against LambdaLR with the same lambda, step by step
/// (f64 to 1e-12 relative; PyTorch multiplies base · λ where we evaluate
/// the formula directly), and the f32 rate the kernels get.
#[test]
fn lr_schedules_match_torch_lambda_lr() {
    for run in fixture()["lr_schedules"].as_array().unwrap() {
        let kind = run["kind"].as_str().unwrap();
        let warmup = run["warmup"].as_u64().unwrap();
        let text = match kind {
            "constant" => "constant".to_string(),
            "cosine" => format!("cosine:warmup={warmup},min={}", num(run, "min")),
            _ => format!("{kind}:warmup={warmup}"),
        };
        let base = num(run, "lr");
        let steps = run["steps"].as_u64().unwrap() as u32;
        let schedule = LrSchedule::new(text.parse().unwrap(), steps, base as f32).unwrap();
        let want: Vec<f64> = run["lrs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(want.len(), steps as usize);
        for (s, &want) in want.iter().enumerate() {
            let got = schedule.lr_f64(base, s as u32);
            assert!((got - want).abs() <= 1e-12 * want.abs(), "{text} over {steps} steps, step {s}: {got} vs {want}");
            let f32_step = schedule.lr(base as f32, s as u32);
            let tol = f32::EPSILON * want.abs() as f32;
            assert!((f32_step - want as f32).abs() <= tol, "{text} step {s}: f32 {f32_step} vs {want}");
        }
    }
}

/// Each update uses the rate of the step it is given, whatever order or
/// optimizer instance applies it.
#[test]
fn updates_take_the_rate_of_their_step() {
    let schedule = LrSchedule::new("linear:warmup=2".parse().unwrap(), 6, 0.5).unwrap();
    let mut opt = Optimizer::new("sgd:lr=0.5".parse().unwrap()).with_lr_schedule(schedule);
    let mut p = Tensor::new(vec![1], vec![1.0]).unwrap();
    let g = Tensor::new(vec![1], vec![1.0]).unwrap();
    let mut want = 1.0f32;
    for step in 0..6 {
        opt.update(step, "p", &mut p, &g).unwrap();
        want -= schedule.lr(0.5, step);
        assert_eq!(p.values().unwrap()[0].to_bits(), want.to_bits(), "step {step}");
    }
    // warmup 0.25, 0.5; then 0.5 · (6 − s)/4: 0.5, 0.375, 0.25, 0.125
    assert_eq!(want, 1.0 - 0.25 - 0.5 - 0.5 - 0.375 - 0.25 - 0.125);
}
