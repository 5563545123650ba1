//! Every op family's backward against central finite differences of its
//! forward.
//!
//! The objective is J = Σ out ⊙ r for a fixed random r (r = 1 for scalar
//! results); the analytic gradients come from `Segment::backward` with r as
//! the output gradient. Parameters and the input (when it holds values) are
//! both perturbed.

mod common;

use baton_engine::{Activation, ParamStore, Recorder, Result, Tensor, TensorId};
use common::{random, record};

type Build = dyn Fn(&mut Recorder<'_>, TensorId) -> Result<TensorId>;

fn objective(params: &ParamStore, x: &Tensor, r: &Tensor, build: &Build) -> f64 {
    let (_, out) = record(params, x.clone(), build);
    let (out, r) = (out.values().unwrap(), r.values().unwrap());
    out.iter().zip(r).map(|(o, r)| f64::from(*o) * f64::from(*r)).sum()
}

fn bump(t: &mut Tensor, i: usize, delta: f32) {
    t.values_mut().unwrap()[i] += delta;
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
                    Some(name) => bump(p.get_mut(name).unwrap(), i, delta),
                    None => bump(&mut xx, i, delta),
                }
                objective(&p, &xx, r, build)
            };
            ((eval(h) - eval(-h)) / (2.0 * f64::from(h))) as f32
        })
        .collect()
}

fn assert_close(what: &str, analytic: &[f32], numeric: &[f32]) {
    assert_eq!(analytic.len(), numeric.len(), "{what}: lengths");
    let scale = numeric.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (a, n)) in analytic.iter().zip(numeric).enumerate() {
        assert!((a - n).abs() <= 1e-2 * scale + 1e-3, "{what}[{i}]: analytic {a} vs numeric {n} (scale {scale})");
    }
}

/// Checks the input gradient (when `x` holds values) and every parameter's
/// gradient of the op(s) recorded by `build`; the segment also passes
/// validation, so its shape inference agrees with what was recorded.
fn check(params: &ParamStore, x: Tensor, build: &Build) {
    let (segment, out) = record(params, x.clone(), build);
    segment.validate().unwrap();
    let r = if out.shape().is_empty() { Tensor::scalar(1.0) } else { random(out.shape(), 99, 1.0) };
    let values_in = x.values().is_ok();
    let grads = segment.backward(params, r.clone(), values_in).unwrap();
    if values_in {
        let dx = grads.input_grad.expect("input gradient requested");
        assert_close("input", dx.values().unwrap(), &numeric(params, &x, &r, build, None));
    }
    for (name, _) in params.iter() {
        let analytic = grads.param_grads.get(name).unwrap_or_else(|_| panic!("no gradient for {name}"));
        assert_close(name, analytic.values().unwrap(), &numeric(params, &x, &r, build, Some(name)));
    }
}

/// Inputs kept away from activation kinks (|x| >= 0.1) so differences are smooth.
fn input(shape: &[usize], seed: u64) -> Tensor {
    let mut t = random(shape, seed, 1.0);
    for v in t.values_mut().unwrap() {
        *v = v.signum() * (v.abs() + 0.1);
    }
    t
}

fn params(list: &[(&str, &[usize])]) -> ParamStore {
    list.iter().enumerate().map(|(i, (n, s))| (n.to_string(), random(s, 100 + i as u64, 0.7))).collect()
}

#[test]
fn linear_with_bias_on_an_nd_input() {
    let p = params(&[("w", &[3, 5]), ("b", &[3])]);
    check(&p, input(&[2, 4, 5], 3), &|rec, x| {
        let (w, b) = (rec.param("w")?, rec.param("b")?);
        rec.linear(x, w, Some(b))
    });
}

#[test]
fn linear_without_bias() {
    let p = params(&[("w", &[2, 5])]);
    check(&p, input(&[3, 5], 5), &|rec, x| {
        let w = rec.param("w")?;
        rec.linear(x, w, None)
    });
}

#[test]
fn linear_whose_weight_is_an_activation() {
    // Parameters are tape nodes like any tensor: here the weight is computed.
    let p = params(&[("w", &[3, 4])]);
    check(&p, input(&[2, 4], 6), &|rec, x| {
        let w = rec.param("w")?;
        let w = rec.activation(w, Activation::Tanh)?;
        rec.linear(x, w, None)
    });
}

#[test]
fn activations() {
    for kind in [Activation::Relu, Activation::Gelu, Activation::Tanh, Activation::Silu] {
        check(&ParamStore::new(), input(&[3, 4], 6), &move |rec, x| rec.activation(x, kind));
    }
}

#[test]
fn layernorm_and_rmsnorm_on_nd_inputs() {
    let p = params(&[("g", &[6]), ("b", &[6])]);
    check(&p, input(&[2, 3, 6], 9), &|rec, x| {
        let (g, b) = (rec.param("g")?, rec.param("b")?);
        rec.layernorm(x, g, b, 1e-5)
    });
    let p = params(&[("g", &[6])]);
    check(&p, input(&[2, 3, 6], 10), &|rec, x| {
        let g = rec.param("g")?;
        rec.rmsnorm(x, g, 1e-5)
    });
}

#[test]
fn broadcasting_add_sub_mul() {
    for (i, shape) in [&[4usize][..], &[3, 1], &[1, 4], &[2, 3, 4]].into_iter().enumerate() {
        let p = params(&[("y", shape)]);
        check(&p, input(&[2, 3, 4], 11 + i as u64), &|rec, x| {
            let y = rec.param("y")?;
            let s = rec.add(x, y)?;
            let d = rec.sub(y, s)?;
            rec.mul(d, x)
        });
    }
}

#[test]
fn scale_and_sum() {
    check(&ParamStore::new(), input(&[3, 4], 14), &|rec, x| {
        let y = rec.scale(x, -0.3)?;
        let z = rec.mul(y, x)?;
        rec.sum(z)
    });
}

#[test]
fn reshape_transpose_split_concat() {
    let p = params(&[("w", &[2, 3, 4])]);
    check(&p, input(&[2, 12], 15), &|rec, x| {
        let x = rec.reshape(x, &[2, 3, 4])?;
        let w = rec.param("w")?;
        let x = rec.mul(x, w)?;
        let t = rec.transpose(x, 0, 2)?;
        let parts = rec.split(t, &[1, 1])?;
        let a = rec.activation(parts[0], Activation::Tanh)?;
        rec.concat(&[parts[1], a])
    });
}

#[test]
fn softmax_plain_and_causal() {
    check(&ParamStore::new(), input(&[2, 3, 5], 16), &|rec, x| rec.softmax(x, false));
    check(&ParamStore::new(), input(&[2, 4, 4], 17), &|rec, x| rec.softmax(x, true));
}

#[test]
fn batched_matmul_with_every_transpose() {
    for (i, (ta, tb)) in [(false, false), (false, true), (true, false), (true, true)].into_iter().enumerate() {
        let a_shape = if ta { [2, 4, 3] } else { [2, 3, 4] };
        let b_shape = if tb { vec![2, 5, 4] } else { vec![2, 4, 5] };
        let p = params(&[("b", &b_shape)]);
        check(&p, input(&a_shape, 20 + i as u64), &move |rec, x| {
            let b = rec.param("b")?;
            rec.matmul(x, b, ta, tb)
        });
    }
}

#[test]
fn embedding_scatter_adds_repeated_ids() {
    let p = params(&[("table", &[5, 3])]);
    let ids = Tensor::from_ids(vec![2, 3], vec![0, 4, 4, 1, 0, 4]).unwrap();
    check(&p, ids, &|rec, ids| {
        let t = rec.param("table")?;
        let e = rec.embedding(ids, t)?;
        rec.activation(e, Activation::Tanh)
    });
}

#[test]
fn dropout_with_a_fixed_mask() {
    check(&ParamStore::new(), input(&[4, 8], 25), &|rec, x| rec.dropout(x, 0.3));
}

#[test]
fn mse_loss() {
    let target = random(&[4, 3], 11, 1.0);
    check(&ParamStore::new(), input(&[4, 3], 12), &move |rec, x| rec.mse_loss(x, target.clone()));
}

#[test]
fn cross_entropy_over_rows_and_over_tokens() {
    let rows = Tensor::from_ids(vec![4], vec![0, 4, 2, 2]).unwrap();
    check(&ParamStore::new(), input(&[4, 5], 13), &move |rec, x| rec.cross_entropy_loss(x, rows.clone()));
    let tokens = Tensor::from_ids(vec![2, 3], vec![0, 4, 2, 2, 1, 3]).unwrap();
    check(&ParamStore::new(), input(&[2, 3, 5], 14), &move |rec, x| rec.cross_entropy_loss(x, tokens.clone()));
}

#[test]
fn a_parameter_used_twice_sums_its_gradients() {
    let p = params(&[("w", &[4, 4])]);
    check(&p, input(&[2, 4], 30), &|rec, x| {
        let w = rec.param("w")?;
        let h = rec.linear(x, w, None)?;
        let h = rec.activation(h, Activation::Tanh)?;
        let w2 = rec.param("w")?;
        rec.linear(h, w2, None)
    });
}

#[test]
fn causal_self_attention_block() {
    let p = params(&[("qkv", &[9, 3]), ("proj", &[3, 3])]);
    check(&p, input(&[2, 4, 3], 31), &|rec, x| {
        let w = rec.param("qkv")?;
        let qkv = rec.linear(x, w, None)?;
        let mut heads = Vec::new();
        for part in rec.split(qkv, &[3, 3, 3])? {
            let h = rec.reshape(part, &[2, 4, 1, 3])?;
            heads.push(rec.transpose(h, 1, 2)?);
        }
        let s = rec.matmul(heads[0], heads[1], false, true)?;
        let s = rec.scale(s, 1.0 / 3f32.sqrt())?;
        let a = rec.softmax(s, true)?;
        let o = rec.matmul(a, heads[2], false, false)?;
        let o = rec.transpose(o, 1, 2)?;
        let o = rec.reshape(o, &[2, 4, 3])?;
        let w = rec.param("proj")?;
        let o = rec.linear(o, w, None)?;
        rec.add(x, o)
    });
}
