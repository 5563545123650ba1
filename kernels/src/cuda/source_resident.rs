//! CUDA C for the transformer's remaining op families (layout, broadcast,
//! softmax, RMSNorm, embedding, dropout, SiLU, on-device loss and norm
//! reductions), appended to [`super::source::source`]. Never compiled by
//! its authors (no NVRTC here): the prototype test in `kernel.rs` holds the
//! Rust parameter lists to these prototypes wherever NVRTC exists.
//!
//! Determinism: no atomics. Row kernels use one thread per row walking its
//! columns in order; column sums one thread per column walking rows in
//! order; the embedding scatter-add one thread per (table row, column)
//! walking positions in order; whole-tensor sums one thread (slow for big
//! tensors, exact order). Broadcasts support rank <= 6 (shapes padded with
//! leading 1s by the Rust side).

pub(crate) const RESIDENT: &str = r#"
extern "C" __global__ void baton_scale_into(const float* x, float f, float* y, u32 n) {
    u32 i = gid(); if (i < n) y[i] = x[i] * f;
}

extern "C" __global__ void baton_silu(const float* x, float* y, u32 n) {
    u32 i = gid(); if (i < n) { float v = x[i]; y[i] = v / (1.0f + expf(-v)); }
}

extern "C" __global__ void baton_silu_backward(const float* x, const float* dy, float* dx, u32 n) {
    u32 i = gid();
    if (i < n) { float v = x[i]; float s = 1.0f / (1.0f + expf(-v)); dx[i] = dy[i] * (s * (1.0f + v * (1.0f - s))); }
}

/* One thread per row; causal rows see columns 0..=(row % cols). */
extern "C" __global__ void baton_softmax(const float* x, u32 rows, u32 cols, u32 causal, float* y) {
    u32 r = gid(); if (r >= rows) return;
    const float* xr = x + (unsigned long long)r * cols; float* yr = y + (unsigned long long)r * cols;
    u32 n = causal ? (r % cols) + 1u : cols;
    float m = __int_as_float((int)0xff800000u);
    for (u32 c = 0; c < n; ++c) m = fmaxf(m, xr[c]);
    float sum = 0.0f;
    for (u32 c = 0; c < n; ++c) { float e = expf(xr[c] - m); yr[c] = e; sum += e; }
    float inv = 1.0f / sum;
    for (u32 c = 0; c < n; ++c) yr[c] = yr[c] * inv;
    for (u32 c = n; c < cols; ++c) yr[c] = 0.0f;
}

extern "C" __global__ void baton_softmax_backward(const float* y, const float* dy, u32 rows, u32 cols, float* dx) {
    u32 r = gid(); if (r >= rows) return;
    unsigned long long o = (unsigned long long)r * cols;
    float dot = 0.0f;
    for (u32 c = 0; c < cols; ++c) dot += y[o + c] * dy[o + c];
    for (u32 c = 0; c < cols; ++c) dx[o + c] = y[o + c] * (dy[o + c] - dot);
}

extern "C" __global__ void baton_rmsnorm(const float* x, const float* g, u32 rows, u32 cols, float eps, float* y, float* rstd) {
    u32 r = gid(); if (r >= rows) return;
    unsigned long long o = (unsigned long long)r * cols;
    float ss = 0.0f;
    for (u32 c = 0; c < cols; ++c) ss += x[o + c] * x[o + c];
    float s = 1.0f / sqrtf(ss * (1.0f / (float)cols) + eps);
    rstd[r] = s;
    for (u32 c = 0; c < cols; ++c) y[o + c] = x[o + c] * s * g[c];
}

extern "C" __global__ void baton_rmsnorm_dx(const float* x, const float* g, const float* rstd, const float* dy, u32 rows, u32 cols, float* dx) {
    u32 r = gid(); if (r >= rows) return;
    unsigned long long o = (unsigned long long)r * cols;
    float s = rstd[r], dot = 0.0f;
    for (u32 c = 0; c < cols; ++c) dot += g[c] * dy[o + c] * x[o + c];
    float k = s * s * s / (float)cols * dot;
    for (u32 c = 0; c < cols; ++c) dx[o + c] = s * (g[c] * dy[o + c]) - x[o + c] * k;
}

extern "C" __global__ void baton_rmsnorm_dg(const float* x, const float* rstd, const float* dy, u32 rows, u32 cols, float* dg) {
    u32 c = gid(); if (c >= cols) return;
    float acc = 0.0f;
    for (u32 r = 0; r < rows; ++r) { unsigned long long i = (unsigned long long)r * cols + c; acc += dy[i] * x[i] * rstd[r]; }
    dg[c] = acc;
}

/* y[i, c] = table[ids[i], c]; an id outside the table reads zeros (the
   engine checks ids on the host before they reach the device). */
extern "C" __global__ void baton_gather(const float* table, u32 vocab, u32 dim, const u32* ids, u32 n, float* y) {
    u32 t = gid(); if (t >= n) return;
    u32 i = t / dim, c = t % dim, id = ids[i];
    y[t] = id < vocab ? table[(unsigned long long)id * dim + c] : 0.0f;
}

/* One thread per (table row v, column c), positions added in order: the
   CPU's order, no atomics. */
extern "C" __global__ void baton_scatter_add(const float* dy, u32 dim, const u32* ids, u32 count, u32 n, float* dt) {
    u32 t = gid(); if (t >= n) return;
    u32 v = t / dim, c = t % dim;
    float acc = 0.0f;
    for (u32 i = 0; i < count; ++i) if (ids[i] == v) acc += dy[(unsigned long long)i * dim + c];
    dt[t] = acc;
}

__device__ __forceinline__ unsigned long long baton_mix(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* kernels/src/dropout.rs: keep when the 24 high bits of the hash of
   (seed, key, index), as a uniform in [0, 1), are >= p. */
extern "C" __global__ void baton_dropout(const float* x, u32 seed_lo, u32 seed_hi, u32 key_lo, u32 key_hi, float p, float* y, u32 n) {
    u32 i = gid(); if (i >= n) return;
    unsigned long long seed = ((unsigned long long)seed_hi << 32) | seed_lo;
    unsigned long long key = ((unsigned long long)key_hi << 32) | key_lo;
    unsigned long long bits = baton_mix(baton_mix(seed ^ baton_mix(key)) + (unsigned long long)i);
    float u = (float)(bits >> 40) * (1.0f / 16777216.0f);
    float scale = 1.0f / (1.0f - p);
    y[i] = u >= p ? x[i] * scale : 0.0f;
}

/* x as [outer, a, mid, b, inner] -> y as [outer, b, mid, a, inner]. */
extern "C" __global__ void baton_transpose(const float* x, u32 outer, u32 a, u32 mid, u32 b, u32 inner, float* y, u32 n) {
    u32 t = gid(); if (t >= n) return;
    u32 in_ = t % inner; u32 r = t / inner;
    u32 ia = r % a; r /= a;
    u32 im = r % mid; r /= mid;
    u32 ib = r % b; u32 io = r / b;
    unsigned long long src = ((((unsigned long long)io * a + ia) * mid + im) * b + ib) * inner + in_;
    y[t] = x[src];
}

extern "C" __global__ void baton_narrow(const float* x, u32 cols, u32 start, u32 len, float* y, u32 n) {
    u32 t = gid(); if (t >= n) return;
    u32 r = t / len, j = t % len;
    y[t] = x[(unsigned long long)r * cols + start + j];
}

extern "C" __global__ void baton_narrow_backward(const float* dy, u32 cols, u32 start, u32 len, float* dx, u32 n) {
    u32 t = gid(); if (t >= n) return;
    u32 r = t / cols, c = t % cols;
    dx[t] = (c >= start && c < start + len) ? dy[(unsigned long long)r * len + (c - start)] : 0.0f;
}

/* y[r, start + j] = part[r, j] for a part of `width` columns (concat). */
extern "C" __global__ void baton_place(const float* part, u32 width, u32 cols, u32 start, float* y, u32 n) {
    u32 t = gid(); if (t >= n) return;
    u32 r = t / width, j = t % width;
    y[(unsigned long long)r * cols + start + j] = part[t];
}

/* Broadcasting a (kind 0: +, 1: -, 2: *) b over rank-6 output dims d0..d5;
   as0..as5 and bs0..bs5 are the operands' strides (0 on broadcast dims). */
extern "C" __global__ void baton_binary(const float* a, const float* b, float* y, u32 n, u32 kind,
    u32 d0, u32 d1, u32 d2, u32 d3, u32 d4, u32 d5,
    u32 as0, u32 as1, u32 as2, u32 as3, u32 as4, u32 as5,
    u32 bs0, u32 bs1, u32 bs2, u32 bs3, u32 bs4, u32 bs5) {
    u32 t = gid(); if (t >= n) return;
    u32 dims[6] = {d0, d1, d2, d3, d4, d5};
    u32 as[6] = {as0, as1, as2, as3, as4, as5};
    u32 bs[6] = {bs0, bs1, bs2, bs3, bs4, bs5};
    unsigned long long ia = 0, ib = 0; u32 r = t;
    for (int d = 5; d >= 0; --d) { u32 c = r % dims[d]; r /= dims[d]; ia += (unsigned long long)c * as[d]; ib += (unsigned long long)c * bs[d]; }
    float x = a[ia], v = b[ib];
    y[t] = kind == 0u ? x + v : (kind == 1u ? x - v : x * v);
}

/* y[o] = x[index(o)] over rank-6 output dims; xs0..xs5 are x's strides (0 on
   broadcast dims). */
extern "C" __global__ void baton_expand(const float* x, float* y, u32 n,
    u32 d0, u32 d1, u32 d2, u32 d3, u32 d4, u32 d5,
    u32 xs0, u32 xs1, u32 xs2, u32 xs3, u32 xs4, u32 xs5) {
    u32 t = gid(); if (t >= n) return;
    u32 dims[6] = {d0, d1, d2, d3, d4, d5};
    u32 xs[6] = {xs0, xs1, xs2, xs3, xs4, xs5};
    unsigned long long ix = 0; u32 r = t;
    for (int d = 5; d >= 0; --d) { u32 c = r % dims[d]; r /= dims[d]; ix += (unsigned long long)c * xs[d]; }
    y[t] = x[ix];
}

/* out[j] = sum of g over the elements reading operand element j, in
   row-major order of g: one thread per j walks the reduced coordinates
   (bit d of `reduced` set) in row-major order. g has rank-6 dims d0..d5. */
extern "C" __global__ void baton_reduce_to(const float* g, float* out, u32 n_out, u32 count, u32 reduced,
    u32 d0, u32 d1, u32 d2, u32 d3, u32 d4, u32 d5) {
    u32 j = gid(); if (j >= n_out) return;
    u32 dims[6] = {d0, d1, d2, d3, d4, d5};
    u32 keep[6]; u32 r = j;
    for (int d = 5; d >= 0; --d) { if (reduced & (1u << d)) { keep[d] = 0; } else { keep[d] = r % dims[d]; r /= dims[d]; } }
    float acc = 0.0f;
    for (u32 k = 0; k < count; ++k) {
        u32 q = k; unsigned long long idx = 0, stride = 1; u32 coord[6];
        for (int d = 5; d >= 0; --d) { if (reduced & (1u << d)) { coord[d] = q % dims[d]; q /= dims[d]; } else { coord[d] = keep[d]; } }
        for (int d = 5; d >= 0; --d) { idx += (unsigned long long)coord[d] * stride; stride *= dims[d]; }
        acc += g[idx];
    }
    out[j] = acc;
}

/* Whole-tensor sums, one thread, f64 in element order (the CPU's). */
extern "C" __global__ void baton_sum_all(const float* x, u32 n, float* out) {
    if (gid() != 0) return;
    double acc = 0.0;
    for (u32 i = 0; i < n; ++i) acc += (double)x[i];
    out[0] = (float)acc;
}

extern "C" __global__ void baton_norm(const float* x, u32 n, float* out) {
    if (gid() != 0) return;
    double acc = 0.0;
    for (u32 i = 0; i < n; ++i) acc += (double)x[i] * (double)x[i];
    out[0] = (float)sqrt(acc);
}

/* The mean of `count` f64 partial sums (mse blocks, cross-entropy rows),
   added in order, divided by `divisor`: the loss stays on the device. */
extern "C" __global__ void baton_mean_f64(double* parts, u32 count, u32 divisor, float* out) {
    if (gid() != 0) return;
    double acc = 0.0;
    for (u32 i = 0; i < count; ++i) acc += parts[i];
    out[0] = (float)(acc / (double)divisor);
}
"#;
