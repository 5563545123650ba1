//! CUDA C for every kernel but the matrix product, compiled at run time by
//! NVRTC (no `nvcc` at build time). Each kernel repeats its CPU kernel's
//! expression with the same parenthesisation, so with FMA contraction off the
//! rounding steps are the same (see the parent module's determinism notes).
//!
//! Conventions: every launch has [`BLOCK`](super::kernel::BLOCK) threads per
//! block; sizes are `u32` (buffers hold at most `i32::MAX` elements, so index
//! arithmetic never wraps); a pointer for an empty buffer may be null and is
//! then never dereferenced.

use cudarc::nvrtc::CompileOptions;

use crate::activation::{FRAC_1_SQRT_2, FRAC_1_SQRT_2PI};
use crate::threads::SUM_BLOCK;

use super::kernel::LANES;

/// NVRTC options: IEEE `÷` and `sqrt`, subnormals kept, and no `a*b + c`
/// contraction into FMA (Rust never contracts, so the CPU does not either).
pub(crate) fn options() -> CompileOptions {
    CompileOptions {
        ftz: Some(false),
        prec_sqrt: Some(true),
        prec_div: Some(true),
        fmad: Some(false),
        name: Some("baton_kernels.cu".into()),
        ..Default::default()
    }
}

/// The whole source: constants taken from the CPU kernels (printed in Rust's
/// shortest round-trip form, so C parses the same `f32`), then the kernels.
pub(crate) fn source() -> String {
    let defines = format!(
        "#define LANES {LANES}u\n#define SUM_BLOCK {SUM_BLOCK}u\n\
         #define FRAC_1_SQRT_2 {FRAC_1_SQRT_2:?}f\n#define FRAC_1_SQRT_2PI {FRAC_1_SQRT_2PI:?}f\n"
    );
    [defines.as_str(), HELPERS, ELEMENTWISE, ROWS, TRAIN, super::source_resident::RESIDENT].concat()
}

const HELPERS: &str = r#"
typedef unsigned int u32;

__device__ __forceinline__ u32 gid() { return blockIdx.x * blockDim.x + threadIdx.x; }

/* Sum of the LANES partial sums of one lane group, combined in the CPU's
   fixed tree ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)); every thread of the group
   gets the result. Every thread of the warp must call it (no early return
   before it): the blocks are whole warps and groups never straddle warps. */
__device__ __forceinline__ float lanes_sum(float v) {
    float l0 = __shfl_sync(0xffffffffu, v, 0, LANES);
    float l1 = __shfl_sync(0xffffffffu, v, 1, LANES);
    float l2 = __shfl_sync(0xffffffffu, v, 2, LANES);
    float l3 = __shfl_sync(0xffffffffu, v, 3, LANES);
    float l4 = __shfl_sync(0xffffffffu, v, 4, LANES);
    float l5 = __shfl_sync(0xffffffffu, v, 5, LANES);
    float l6 = __shfl_sync(0xffffffffu, v, 6, LANES);
    float l7 = __shfl_sync(0xffffffffu, v, 7, LANES);
    return ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7));
}

/* g + wd*p, skipped when wd == 0 (as PyTorch and the CPU kernel do). */
__device__ __forceinline__ float decay(float g, float p, float wd) {
    return wd != 0.0f ? g + wd * p : g;
}
"#;

const ELEMENTWISE: &str = r#"
extern "C" __global__ void baton_add(const float* a, const float* b, float* out, u32 n) {
    u32 i = gid();
    if (i < n) out[i] = a[i] + b[i];
}

extern "C" __global__ void baton_add_assign(float* dst, const float* src, u32 n) {
    u32 i = gid();
    if (i < n) dst[i] = dst[i] + src[i];
}

extern "C" __global__ void baton_scale(float* x, float s, u32 n) {
    u32 i = gid();
    if (i < n) x[i] = x[i] * s;
}

extern "C" __global__ void baton_add_bias_rows(float* y, const float* bias, u32 n, u32 cols) {
    u32 i = gid();
    if (i < n) y[i] = y[i] + bias[i % cols];
}

/* One thread per column; rows added strictly in order. */
extern "C" __global__ void baton_sum_rows(const float* x, u32 rows, u32 cols, float* out, u32 accumulate) {
    u32 c = gid();
    if (c >= cols) return;
    float acc = accumulate ? out[c] : 0.0f;
    for (u32 r = 0; r < rows; r++) acc = acc + x[r * cols + c];
    out[c] = acc;
}

extern "C" __global__ void baton_relu(const float* x, float* y, u32 n) {
    u32 i = gid();
    if (i >= n) return;
    float v = x[i];
    y[i] = (v > 0.0f || v != v) ? v : 0.0f;
}

extern "C" __global__ void baton_relu_backward(const float* y, const float* dy, float* dx, u32 n) {
    u32 i = gid();
    if (i < n) dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
}

extern "C" __global__ void baton_gelu(const float* x, float* y, u32 n) {
    u32 i = gid();
    if (i >= n) return;
    float v = x[i];
    y[i] = 0.5f * v * (1.0f + erff(v * FRAC_1_SQRT_2));
}

extern "C" __global__ void baton_gelu_backward(const float* x, const float* dy, float* dx, u32 n) {
    u32 i = gid();
    if (i >= n) return;
    float v = x[i];
    float cdf = 0.5f * (1.0f + erff(v * FRAC_1_SQRT_2));
    float pdf = expf(-0.5f * v * v) * FRAC_1_SQRT_2PI;
    dx[i] = dy[i] * (cdf + v * pdf);
}

extern "C" __global__ void baton_tanh(const float* x, float* y, u32 n) {
    u32 i = gid();
    if (i < n) y[i] = tanhf(x[i]);
}

extern "C" __global__ void baton_tanh_backward(const float* y, const float* dy, float* dx, u32 n) {
    u32 i = gid();
    if (i >= n) return;
    float v = y[i];
    dx[i] = dy[i] * (1.0f - v * v);
}
"#;

const ROWS: &str = r#"
/* LANES threads per row: lane l sums elements l, l+LANES, ... in order. */
extern "C" __global__ void baton_layernorm(const float* x, const float* gamma, const float* beta,
                                           u32 rows, u32 cols, float eps, float* y, float* stats) {
    u32 row = gid() / LANES, lane = gid() % LANES;
    bool live = row < rows;
    const float* xr = x + (live ? row * cols : 0u);
    float inv_n = 1.0f / (float)cols;
    float acc = 0.0f;
    if (live) for (u32 c = lane; c < cols; c += LANES) acc = acc + xr[c];
    float mean = lanes_sum(acc) * inv_n;
    acc = 0.0f;
    if (live) for (u32 c = lane; c < cols; c += LANES) acc = acc + (xr[c] - mean) * (xr[c] - mean);
    float var = lanes_sum(acc) * inv_n;
    float rstd = 1.0f / sqrtf(var + eps);
    if (!live) return;
    for (u32 c = lane; c < cols; c += LANES) y[row * cols + c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
    if (lane == 0) {
        stats[row] = mean;
        stats[rows + row] = rstd;
    }
}

/* dx = rstd*(dy*g - mean(dy*g) - xhat*mean(dy*g*xhat)), LANES threads per row. */
extern "C" __global__ void baton_layernorm_dx(const float* x, const float* gamma, const float* stats,
                                              const float* dy, u32 rows, u32 cols, float* dx) {
    u32 row = gid() / LANES, lane = gid() % LANES;
    bool live = row < rows;
    u32 base = live ? row * cols : 0u;
    float mean = live ? stats[row] : 0.0f, rstd = live ? stats[rows + row] : 0.0f;
    float inv_n = 1.0f / (float)cols;
    float sg = 0.0f, sgx = 0.0f;
    if (live) {
        for (u32 c = lane; c < cols; c += LANES) {
            sg = sg + dy[base + c] * gamma[c];
            sgx = sgx + dy[base + c] * gamma[c] * ((x[base + c] - mean) * rstd);
        }
    }
    float mg = lanes_sum(sg) * inv_n;
    float mgx = lanes_sum(sgx) * inv_n;
    if (!live) return;
    for (u32 c = lane; c < cols; c += LANES) {
        float xhat = (x[base + c] - mean) * rstd;
        dx[base + c] = rstd * (dy[base + c] * gamma[c] - mg - xhat * mgx);
    }
}

/* One thread per column; rows added strictly in order. */
extern "C" __global__ void baton_layernorm_params(const float* x, const float* stats, const float* dy,
                                                  u32 rows, u32 cols, float* dgamma, float* dbeta, u32 accumulate) {
    u32 c = gid();
    if (c >= cols) return;
    float dg = accumulate ? dgamma[c] : 0.0f, db = accumulate ? dbeta[c] : 0.0f;
    for (u32 r = 0; r < rows; r++) {
        float g = dy[r * cols + c];
        dg = dg + g * ((x[r * cols + c] - stats[r]) * stats[rows + r]);
        db = db + g;
    }
    dgamma[c] = dg;
    dbeta[c] = db;
}

/* LANES threads per SUM_BLOCK-element block; partials[b] = that block's sum. */
extern "C" __global__ void baton_mse_partials(const float* pred, const float* target, u32 n, double* partials) {
    u32 blk = gid() / LANES, lane = gid() % LANES;
    u32 nblocks = (n + SUM_BLOCK - 1u) / SUM_BLOCK;
    bool live = blk < nblocks;
    float acc = 0.0f;
    if (live) {
        u32 end = n - blk * SUM_BLOCK < SUM_BLOCK ? n : blk * SUM_BLOCK + SUM_BLOCK;
        for (u32 i = blk * SUM_BLOCK + lane; i < end; i += LANES) acc = acc + (pred[i] - target[i]) * (pred[i] - target[i]);
    }
    float s = lanes_sum(acc);
    if (live && lane == 0) partials[blk] = (double)s;
}
"#;

const TRAIN: &str = r#"
extern "C" __global__ void baton_mse_backward(const float* pred, const float* target, float k, float* dpred, u32 n) {
    u32 i = gid();
    if (i < n) dpred[i] = k * (pred[i] - target[i]);
}

/* One thread per row, classes in order: probs = softmax, losses[r] = lse - z[t]. */
extern "C" __global__ void baton_ce_rows(const float* logits, const u32* targets, u32 rows, u32 classes,
                                         float* probs, double* losses) {
    u32 r = gid();
    if (r >= rows) return;
    const float* z = logits + r * classes;
    float* p = probs + r * classes;
    float mx = __int_as_float((int)0xff800000u) /* -inf */;
    for (u32 c = 0; c < classes; c++) mx = fmaxf(mx, z[c]);
    double sum = 0.0;
    for (u32 c = 0; c < classes; c++) {
        float e = expf(z[c] - mx);
        p[c] = e;
        sum = sum + (double)e;
    }
    for (u32 c = 0; c < classes; c++) p[c] = (float)((double)p[c] / sum);
    double lse = (double)mx + log(sum);
    losses[r] = lse - (double)z[targets[r]];
}

extern "C" __global__ void baton_ce_backward(const float* probs, const u32* targets, u32 classes, float k,
                                             float* dlogits, u32 n) {
    u32 i = gid();
    if (i >= n) return;
    u32 r = i / classes, c = i % classes;
    dlogits[i] = c == targets[r] ? k * (probs[i] - 1.0f) : k * probs[i];
}

extern "C" __global__ void baton_sgd_plain(float* param, const float* grad, float neg_lr, float wd, u32 n) {
    u32 i = gid();
    if (i < n) param[i] = param[i] + neg_lr * decay(grad[i], param[i], wd);
}

extern "C" __global__ void baton_sgd_momentum(float* param, const float* grad, float* buf, u32 first, float momentum,
                                              float damp, u32 nesterov, float neg_lr, float wd, u32 n) {
    u32 i = gid();
    if (i >= n) return;
    float g = decay(grad[i], param[i], wd);
    float b = first ? g : buf[i] * momentum + damp * g;
    buf[i] = b;
    float d = nesterov ? g + momentum * b : b;
    param[i] = param[i] + neg_lr * d;
}

/* torch's _single_tensor_adam with the host-computed scalars of optim.rs. */
extern "C" __global__ void baton_adam(float* param, const float* grad, float* m, float* v, float wd, float w1,
                                      float beta2, float w2, float neg_step_size, float bc2_sqrt, float eps, u32 n) {
    u32 i = gid();
    if (i >= n) return;
    float p = param[i];
    float g = decay(grad[i], p, wd);
    float mi = m[i];
    mi = w1 < 0.5f ? mi + w1 * (g - mi) : g - (g - mi) * (1.0f - w1);
    float vi = v[i] * beta2 + w2 * g * g;
    float denom = sqrtf(vi) / bc2_sqrt + eps;
    m[i] = mi;
    v[i] = vi;
    param[i] = p + neg_step_size * mi / denom;
}

/* torch's AdamW (decoupled decay): param *= keep (= 1 - lr*wd, host-rounded), then Adam with no L2 term. */
extern "C" __global__ void baton_adamw(float* param, const float* grad, float* m, float* v, float keep, float w1,
                                       float beta2, float w2, float neg_step_size, float bc2_sqrt, float eps, u32 n) {
    u32 i = gid();
    if (i >= n) return;
    float p = keep != 1.0f ? param[i] * keep : param[i];
    float g = grad[i];
    float mi = m[i];
    mi = w1 < 0.5f ? mi + w1 * (g - mi) : g - (g - mi) * (1.0f - w1);
    float vi = v[i] * beta2 + w2 * g * g;
    float denom = sqrtf(vi) / bc2_sqrt + eps;
    m[i] = mi;
    v[i] = vi;
    param[i] = p + neg_step_size * mi / denom;
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_print_as_the_same_f32() {
        let src = source();
        let parse = |name: &str| -> f32 {
            let line = src.lines().find(|l| l.starts_with(&format!("#define {name} "))).unwrap();
            line.rsplit(' ').next().unwrap().trim_end_matches('f').parse().unwrap()
        };
        assert_eq!(parse("FRAC_1_SQRT_2").to_bits(), FRAC_1_SQRT_2.to_bits());
        assert_eq!(parse("FRAC_1_SQRT_2PI").to_bits(), FRAC_1_SQRT_2PI.to_bits());
        assert!(src.contains(&format!("#define SUM_BLOCK {SUM_BLOCK}u")));
        assert!(options().fmad == Some(false) && options().use_fast_math.is_none());
    }
}
