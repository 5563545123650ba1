//! Every op's backward against central finite differences of its forward.
//!
//! The objective is J = Σ out ⊙ r for a fixed random r (r = 1 for the scalar
//! losses); the analytic gradients come from `Segment::backward` with r as
//! the output gradient.

mod common;

use baton_engine::{Activation, ParamStore, Recorder, Result, Tensor, TensorId};
use common::{random, record};

type Build = dyn Fn(&mut Recorder<'_>, TensorId) -> Result<TensorId>;

fn objective(params: &ParamStore, x: &Tensor, r: &Tensor, build: &Build) -> f64 {
    let (_, out) = record(params, x.clone(), build);
    out.data.iter().zip(&r.data).map(|(o, r)| f64::from(*o) * f64::from(*r)).sum()
}

/// Central differences of J wrt every element of `x` (None) or of a parameter.
fn numeric(params: &ParamStore, x: &Tensor, r: &Tensor, build: &Build, param: Option<&str>) -> Vec<f32> {
    let h = 1e-2f32;
    let n = param.map_or(x.len(), |p| params.get(p).unwrap().len());
    (0..n)
        .map(|i| {
            let eval = |delta: f32| {
                let (mut p, mut xx) = (params.clone(), x.clone());
                match param {
                    Some(name) => p.get_mut(name).unwrap().data[i] += delta,
                    None => xx.data[i] += delta,
                }
                objective(&p, &xx, r, build)
            };
            ((eval(h) - eval(-h)) / (2.0 * f64::from(h))) as f32
        })
        .collect()
}

fn assert_close(what: &str, analytic: &[f32], numeric: &[f32]) {
    let scale = numeric.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!((a - n).abs() <= 1e-2 * scale + 1e-3, "{what}[{i}]: analytic {a} vs numeric {n} (scale {scale})");
    }
}

/// Checks input and parameter gradients of the op(s) recorded by `build`.
fn check(params: &ParamStore, x: Tensor, build: &Build) {
    let (segment, out) = record(params, x.clone(), build);
    let r = if out.shape.is_empty() { Tensor::scalar(1.0) } else { random(&out.shape, 99, 1.0) };
    let grads = segment.backward(params, r.clone(), true).unwrap();
    let dx = grads.input_grad.expect("input gradient requested");
    assert_close("input", &dx.data, &numeric(params, &x, &r, build, None));
    for (name, _) in params.iter() {
        let analytic = grads.param_grads.get(name).unwrap();
        assert_close(name, &analytic.data, &numeric(params, &x, &r, build, Some(name)));
    }
}

/// Inputs kept away from activation kinks (|x| >= 0.1) so differences are smooth.
fn input(shape: &[usize], seed: u64) -> Tensor {
    let mut t = random(shape, seed, 1.0);
    for v in &mut t.data {
        *v = v.signum() * (v.abs() + 0.1);
    }
    t
}

fn linear_params() -> ParamStore {
    [("w".to_string(), random(&[3, 5], 1, 0.7)), ("b".to_string(), random(&[3], 2, 0.5))].into_iter().collect()
}

#[test]
fn linear_with_bias() {
    check(&linear_params(), input(&[4, 5], 3), &|rec, x| rec.linear(x, "w", Some("b")));
}

#[test]
fn linear_without_bias() {
    let params: ParamStore = [("w".to_string(), random(&[2, 5], 4, 0.7))].into_iter().collect();
    check(&params, input(&[3, 5], 5), &|rec, x| rec.linear(x, "w", None));
}

#[test]
fn activations() {
    for kind in [Activation::Relu, Activation::Gelu, Activation::Tanh] {
        check(&ParamStore::new(), input(&[3, 4], 6), &move |rec, x| rec.activation(x, kind));
    }
}

#[test]
fn layernorm() {
    let params: ParamStore =
        [("g".to_string(), random(&[6], 7, 1.0)), ("b".to_string(), random(&[6], 8, 1.0))].into_iter().collect();
    check(&params, input(&[3, 6], 9), &|rec, x| rec.layernorm(x, "g", "b", 1e-5));
}

#[test]
fn add_of_a_tensor_to_itself_and_a_branch() {
    // y = x + tanh(x): x feeds two ops, so its gradient is a sum.
    check(&ParamStore::new(), input(&[2, 3], 10), &|rec, x| {
        let t = rec.activation(x, Activation::Tanh)?;
        rec.add(x, t)
    });
}

#[test]
fn mse_loss() {
    let target = random(&[4, 3], 11, 1.0);
    check(&ParamStore::new(), input(&[4, 3], 12), &move |rec, x| rec.mse_loss(x, target.clone()));
}

#[test]
fn cross_entropy_loss() {
    check(&ParamStore::new(), input(&[4, 5], 13), &|rec, x| rec.cross_entropy_loss(x, &[0, 4, 2, 2]));
}

#[test]
fn composite_residual_block() {
    let params: ParamStore = [
        ("g", random(&[4], 20, 1.0)),
        ("beta", random(&[4], 21, 0.3)),
        ("w1", random(&[6, 4], 22, 0.5)),
        ("b1", random(&[6], 23, 0.5)),
        ("w2", random(&[4, 6], 24, 0.5)),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t))
    .collect();
    check(&params, input(&[3, 4], 25), &|rec, x| {
        let h = rec.layernorm(x, "g", "beta", 1e-5)?;
        let h = rec.linear(h, "w1", Some("b1"))?;
        let h = rec.activation(h, Activation::Gelu)?;
        let h = rec.linear(h, "w2", None)?;
        rec.add(x, h)
    });
}
