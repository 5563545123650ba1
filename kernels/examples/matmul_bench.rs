//! Our `matmul` on every kernel path against the `gemm` crate, side by side:
//! `cargo run --release -p baton-kernels --example matmul_bench [-- --quick]
//! [--only NAME-PART] [--threads N]`.
//!
//! Shapes: the W=1024 MLP step (`baton bench step`: B=256) and a d=512 GPT
//! (batch 8 × T 128 = 1024 rows; linears 512→1536, 512→512, 512→2048,
//! 2048→512; attention per head [128×64]·[64×128]), each forward (x·Wᵀ) and
//! both backward products (dX = dY·W, dW = dYᵀ·X), at 1 and 2 threads.
//!
//! The generic path (software `fmaf` calls, ~1 GFLOP/s) is timed on the MLP
//! and attention rows only; its GPT rows print `-`.
//!
//! At 2 threads the last column, `cpu g/o`, is the process CPU seconds per
//! call of the `gemm` crate over those of our fastest path (mean over all
//! samples, pool threads' spinning and waiting included): on a shared
//! machine it moves much less than wall time, which other processes'
//! threads interrupt.
//!
//! The FMA peak of a path is units × lanes × 2 flop × GHz. The clock is
//! measured, not assumed: a loop of independent vector FMAs (nothing else)
//! runs for each vector width, and peak = its GFLOP/s; the table header
//! prints the clock it implies for 2 FMA units per core.

use std::hint::black_box;
use std::time::Instant;

use baton_kernels::isa::{self, Isa};
use baton_kernels::{matmul, threads, Trans};

/// One product: `c[m×n] = op(a)·op(b)`, op(a) m×k.
struct Shape {
    name: &'static str,
    m: usize,
    k: usize,
    n: usize,
    ta: Trans,
    tb: Trans,
}

/// The three products of a linear layer `rows × inp → out`.
fn linear(out: &mut Vec<Shape>, names: [&'static str; 3], rows: usize, inp: usize, outp: usize) {
    out.push(Shape { name: names[0], m: rows, k: inp, n: outp, ta: Trans::No, tb: Trans::Yes });
    out.push(Shape { name: names[1], m: rows, k: outp, n: inp, ta: Trans::No, tb: Trans::No });
    out.push(Shape { name: names[2], m: outp, k: rows, n: inp, ta: Trans::Yes, tb: Trans::No });
}

fn shapes() -> Vec<Shape> {
    let mut s = Vec::new();
    linear(&mut s, ["mlp1024 fwd xWt", "mlp1024 dx=dyW", "mlp1024 dW=dytx"], 256, 1024, 1024);
    linear(&mut s, ["gpt qkv fwd", "gpt qkv dx", "gpt qkv dW"], 1024, 512, 1536);
    linear(&mut s, ["gpt proj fwd", "gpt proj dx", "gpt proj dW"], 1024, 512, 512);
    linear(&mut s, ["gpt fc1 fwd", "gpt fc1 dx", "gpt fc1 dW"], 1024, 512, 2048);
    linear(&mut s, ["gpt fc2 fwd", "gpt fc2 dx", "gpt fc2 dW"], 1024, 2048, 512);
    let (t, d) = (128, 64);
    s.push(Shape { name: "attn S=QKt", m: t, k: d, n: t, ta: Trans::No, tb: Trans::Yes });
    s.push(Shape { name: "attn O=PV", m: t, k: t, n: d, ta: Trans::No, tb: Trans::No });
    s.push(Shape { name: "attn dP=dOVt", m: t, k: d, n: t, ta: Trans::No, tb: Trans::Yes });
    s.push(Shape { name: "attn dV=PtdO", m: t, k: t, n: d, ta: Trans::Yes, tb: Trans::No });
    s.push(Shape { name: "attn dQ=dSK", m: t, k: t, n: d, ta: Trans::No, tb: Trans::No });
    s.push(Shape { name: "attn dK=dStQ", m: t, k: t, n: d, ta: Trans::Yes, tb: Trans::No });
    s
}

/// A clock in seconds.
#[derive(Clone, Copy)]
enum Clock {
    /// Wall time (what a multi-threaded call costs).
    Wall,
    /// CPU time of the calling thread: time it was preempted does not count
    /// (single-threaded calls on a shared machine).
    Thread,
}

impl Clock {
    fn now(self, origin: Instant) -> f64 {
        match self {
            Clock::Wall => origin.elapsed().as_secs_f64(),
            Clock::Thread => thread_cpu_seconds().unwrap_or_else(|| origin.elapsed().as_secs_f64()),
        }
    }
}

/// CPU seconds the calling thread has run (Linux), else `None`.
fn thread_cpu_seconds() -> Option<f64> {
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    cpu_seconds(CLOCK_THREAD_CPUTIME_ID)
}

/// CPU seconds all threads of the process have run (Linux), else `None`:
/// what a multi-threaded call costs, idle spinning of pool threads included.
fn process_cpu_seconds() -> Option<f64> {
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    cpu_seconds(CLOCK_PROCESS_CPUTIME_ID)
}

/// The reading of CPU-time clock `clock` (Linux), else `None`.
fn cpu_seconds(clock: i32) -> Option<f64> {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
        }
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec (two i64 on x86-64 and
        // aarch64 Linux); clock_gettime writes only it.
        let rc = unsafe { clock_gettime(clock, &mut ts) };
        (rc == 0).then_some(ts.sec as f64 + ts.nsec as f64 * 1e-9)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = clock;
        None
    }
}

/// Seconds per call of `f` on `clock`, from short samples (each one call,
/// or enough calls to last ~0.5 ms) taken for `budget` seconds of wall
/// time: the fastest sample on the wall clock (the build machine is shared,
/// and the fastest sample is the least disturbed), the median on the thread
/// clock (whose readings in this VM are sometimes short by steal time
/// accounted late, so its fastest samples are too fast).
fn time(clock: Clock, budget: f64, mut f: impl FnMut()) -> f64 {
    let origin = Instant::now();
    f();
    let t = clock.now(origin);
    f();
    let once = (clock.now(origin) - t).max(1e-9);
    if once > budget / 4.0 {
        return once;
    }
    let reps = ((0.5e-3 / once) as usize).max(1);
    let (start, mut samples) = (Instant::now(), Vec::new());
    while start.elapsed().as_secs_f64() < budget || samples.len() < 3 {
        let t = clock.now(origin);
        for _ in 0..reps {
            f();
        }
        samples.push((clock.now(origin) - t) / reps as f64);
    }
    pick(clock, samples)
}

/// The `gemm` crate as `baton_kernels::matmul` called it before (strides for
/// transposes, rayon above the same flop threshold).
fn gemm_crate(c: &mut [f32], a: &[f32], b: &[f32], s: &Shape, nthreads: usize) {
    let st = |t: Trans, rows: usize, cols: usize| match t {
        Trans::No => (cols as isize, 1isize),
        Trans::Yes => (1, rows as isize),
    };
    let ((a_rs, a_cs), (b_rs, b_cs)) = (st(s.ta, s.m, s.k), st(s.tb, s.k, s.n));
    let par = if nthreads > 1 && s.m * s.n * s.k >= baton_kernels::matmul::PAR_MIN_FLOPS {
        gemm::Parallelism::Rayon(nthreads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: a, b, c hold m*k, k*n, m*n elements and the strides address
    // exactly op(a), op(b) and row-major c inside them; c is exclusive.
    unsafe {
        gemm::gemm(
            s.m,
            s.n,
            s.k,
            c.as_mut_ptr(),
            1,
            s.n as isize,
            false,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

/// Per-core FMA peak of each available path: measured FMA-only loops for
/// the vector paths; for the generic path, scalar FMA (2 units × 1 lane × 2
/// flop) at the clock the narrowest measured vector loop implies.
fn measured_peaks() -> Vec<(Isa, f64)> {
    let mut out: Vec<(Isa, f64)> = Vec::new();
    for isa in Isa::available() {
        let p = match isa {
            Isa::Generic => out.last().map_or(f64::NAN, |&(i, p)| p / peak::lanes(i)),
            _ => peak::gflops(isa),
        };
        out.push((isa, p));
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let budget = if args.iter().any(|a| a == "--quick") { 0.1 } else { 0.4 };
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let thread_counts: Vec<usize> = match args.iter().position(|a| a == "--threads") {
        Some(i) => vec![args[i + 1].parse().expect("--threads N")],
        None => vec![1, 2],
    };
    if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
        println!("load average before the run: {}", load.trim());
    }
    let peaks = measured_peaks();
    for (isa, p) in &peaks {
        let ghz = p / (2.0 * 2.0 * peak::lanes(*isa));
        println!(
            "FMA peak, 1 core, {isa}: {p:.1} GFLOP/s = 2 units x {} lanes x 2 flop x {ghz:.2} GHz",
            peak::lanes(*isa)
        );
    }
    let isas = Isa::available();
    let mut header = format!("{:<16} {:>14} {:>4}", "shape", "m x k x n", "thr");
    for isa in &isas {
        header += &format!(" {:>16}", format!("{isa} (%peak)"));
    }
    header += &format!(" {:>9} {:>9} {:>9}", "gemm", "best/gemm", "cpu g/o");
    println!("GFLOP/s per call: 1 thread from the median sample of the thread's CPU time (preemption excluded), 2 threads from the fastest sample of wall time; our vector paths and gemm sampled round-robin");
    println!("%peak = of the path's measured per-core peak x threads; cpu g/o (2 threads): process CPU seconds per call of gemm / of our fastest path\n{header}");
    for t in thread_counts {
        threads::set_num_threads(t).expect("thread pool");
        for s in shapes().into_iter().filter(|s| only.as_ref().is_none_or(|o| s.name.contains(o.as_str()))) {
            row(&s, t, &isas, &peaks, budget);
        }
    }
}

fn row(s: &Shape, t: usize, isas: &[Isa], peaks: &[(Isa, f64)], budget: f64) {
    let a: Vec<f32> = (0..s.m * s.k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
    let b: Vec<f32> = (0..s.k * s.n).map(|i| (i % 7) as f32 * 0.2 - 0.6).collect();
    let flop = 2.0 * (s.m * s.n * s.k) as f64;
    let clock = if t == 1 { Clock::Thread } else { Clock::Wall };
    // The vector paths and the gemm crate, sampled round-robin.
    let vector: Vec<Isa> = isas.iter().copied().filter(|&i| i != Isa::Generic).collect();
    let mut outs: Vec<Vec<f32>> = (0..=vector.len()).map(|_| vec![0.0f32; s.m * s.n]).collect();
    let (ours_c, gemm_c) = outs.split_at_mut(vector.len());
    let mut fs: Vec<Box<dyn FnMut() + '_>> = Vec::new();
    for (&isa, c) in vector.iter().zip(ours_c.iter_mut()) {
        let (a, b) = (&a, &b);
        fs.push(Box::new(move || {
            isa::with_isa(isa, || matmul(black_box(c), black_box(a), s.ta, black_box(b), s.tb, s.m, s.k, s.n, false))
                .expect("available path")
        }));
    }
    let gc = &mut gemm_c[0];
    fs.push(Box::new(|| gemm_crate(black_box(gc), &a, &b, s, t)));
    let timed = time_interleaved(clock, budget, &mut fs);
    let secs: Vec<f64> = timed.iter().map(|t| t.0).collect();
    drop(fs);
    let mut line = format!("{:<16} {:>14} {t:>4}", s.name, format!("{}x{}x{}", s.m, s.k, s.n));
    let mut best: f64 = 0.0;
    for &isa in isas {
        let g = match vector.iter().position(|&v| v == isa) {
            Some(i) => flop / secs[i] / 1e9,
            // Seconds per call in software FMA; the MLP and attention rows show its speed.
            None if s.name.starts_with("gpt") => {
                line += &format!(" {:>16}", "-");
                continue;
            }
            None => {
                let mut c = vec![0.0f32; s.m * s.n];
                let run = || matmul(black_box(&mut c), black_box(&a), s.ta, black_box(&b), s.tb, s.m, s.k, s.n, false);
                flop / isa::with_isa(isa, || time(clock, budget, run)).expect("generic") / 1e9
            }
        };
        let peak = peaks.iter().find(|(i, _)| *i == isa).map_or(f64::NAN, |p| p.1) * t as f64;
        best = best.max(g);
        line += &format!(" {:>16}", format!("{g:.1} ({:.0}%)", 100.0 * g / peak));
    }
    let g = flop / secs[vector.len()] / 1e9;
    // Process CPU per call, gemm's over that of our fastest path: > 1 when
    // ours costs less CPU (2 threads: spinning and waiting included).
    let fastest = (0..vector.len()).min_by(|&x, &y| secs[x].total_cmp(&secs[y]));
    let cpu = fastest.map_or(f64::NAN, |i| timed[vector.len()].1 / timed[i].1);
    let cpu = if t > 1 { format!("{cpu:.2}") } else { "-".into() };
    println!("{line} {g:>9.1} {:>9.2} {cpu:>9}", best / g);
}

/// Like [`time`] for several contenders at once, sampled round-robin for
/// `budget` seconds each, so that load from other processes falls on all
/// of them alike; with each one's process CPU seconds per call (mean over
/// all samples; NaN where the clock is missing).
fn time_interleaved(clock: Clock, budget: f64, fs: &mut [Box<dyn FnMut() + '_>]) -> Vec<(f64, f64)> {
    let origin = Instant::now();
    let reps: Vec<usize> = fs
        .iter_mut()
        .map(|f| {
            f();
            let t = clock.now(origin);
            f();
            ((0.5e-3 / (clock.now(origin) - t).max(1e-9)) as usize).max(1)
        })
        .collect();
    let mut samples = vec![Vec::new(); fs.len()];
    let mut cpu = vec![(0.0, 0usize); fs.len()];
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < budget * fs.len() as f64 || samples[0].len() < 3 {
        for (((f, &r), out), cpu) in fs.iter_mut().zip(&reps).zip(&mut samples).zip(&mut cpu) {
            let (t, p) = (clock.now(origin), process_cpu_seconds().unwrap_or(f64::NAN));
            for _ in 0..r {
                f();
            }
            out.push((clock.now(origin) - t) / r as f64);
            *cpu = (cpu.0 + process_cpu_seconds().unwrap_or(f64::NAN) - p, cpu.1 + r);
        }
    }
    samples.into_iter().zip(cpu).map(|(s, (c, n))| (pick(clock, s), c / n as f64)).collect()
}

/// The sample [`time`] reports: fastest on the wall clock, median on the
/// thread clock.
fn pick(clock: Clock, mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    match clock {
        Clock::Wall => samples[0],
        Clock::Thread => samples[samples.len() / 2],
    }
}

/// FMA-throughput loops (the peak of each path).
mod peak {
    use super::Isa;
    use std::time::Instant;

    /// f32 lanes of one FMA of `isa`.
    pub(super) fn lanes(isa: Isa) -> f64 {
        match isa {
            Isa::Avx512 => 16.0,
            Isa::Avx2 => 8.0,
            Isa::Generic => 1.0,
        }
    }

    /// GFLOP/s of `ITERS` × 12 independent FMA chains of `isa`'s width
    /// (about 1 ms), the best of 300 runs.
    pub(super) fn gflops(isa: Isa) -> f64 {
        const ITERS: usize = 20_000;
        let once = || {
            let t = Instant::now();
            std::hint::black_box(run(isa, ITERS));
            (ITERS * 12) as f64 * lanes(isa) * 2.0 / t.elapsed().as_secs_f64() / 1e9
        };
        (0..300).map(|_| once()).fold(0.0, f64::max)
    }

    fn run(isa: Isa, iters: usize) -> f32 {
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: Isa::available() listed the path, so the CPU has its features.
            Isa::Avx512 => unsafe { x86::avx512(iters) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            Isa::Avx2 => unsafe { x86::avx2(iters) },
            _ => unreachable!("the generic peak is derived, not measured"),
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        /// # Safety
        /// The CPU has AVX-512F.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn avx512(iters: usize) -> f32 {
            let (x, y) = (_mm512_set1_ps(std::hint::black_box(0.999)), _mm512_set1_ps(1e-3));
            let mut acc = [_mm512_setzero_ps(); 12];
            for _ in 0..iters {
                for a in &mut acc {
                    *a = _mm512_fmadd_ps(*a, x, y);
                }
            }
            acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
        }

        /// # Safety
        /// The CPU has AVX2 and FMA.
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn avx2(iters: usize) -> f32 {
            let (x, y) = (_mm256_set1_ps(std::hint::black_box(0.999)), _mm256_set1_ps(1e-3));
            let mut acc = [_mm256_setzero_ps(); 12];
            for _ in 0..iters {
                for a in &mut acc {
                    *a = _mm256_fmadd_ps(*a, x, y);
                }
            }
            let mut out = [0.0f32; 8];
            for a in acc {
                let mut l = [0.0f32; 8];
                // SAFETY: `l` holds 8 f32.
                unsafe { _mm256_storeu_ps(l.as_mut_ptr(), a) };
                out.iter_mut().zip(l).for_each(|(o, v)| *o += v);
            }
            out.iter().sum()
        }
    }
}
