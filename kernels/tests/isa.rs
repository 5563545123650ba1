//! Every kernel path gives the bits of the literal fma chain that defines
//! `matmul` (see `baton_kernels::matmul`), for any shape, transpose,
//! accumulate flag and thread count; unknown or unavailable paths are errors.
//!
//! Paths this CPU lacks are skipped, and say so on stderr.

mod common;

use std::process::Command;

use baton_kernels::isa::{self, Isa};
use baton_kernels::{matmul, threads, Error};
use common::{bits, data, reference, Product, Rng, TRANS};

/// The paths to compare: those the CPU has; prints the ones it lacks.
fn paths() -> Vec<Isa> {
    for isa in Isa::ALL.into_iter().filter(|isa| !isa.is_available()) {
        eprintln!("skipping {isa} path: CPU lacks it");
    }
    Isa::available()
}

/// Runs `matmul` on `isa` (also with `accumulate`) and checks both against
/// the reference, bit for bit.
fn check_shape(rng: &mut Rng, isas: &[Isa], m: usize, k: usize, n: usize) {
    for (ta, tb) in TRANS {
        let product = Product::random(rng, (ta, tb), m, k, n);
        for &isa in isas {
            product.check(isa, &format!("{isa} {m}x{k}x{n} {ta:?}/{tb:?}"));
        }
    }
}

#[test]
fn every_path_computes_the_fma_chain_on_edge_shapes() {
    let isas = paths();
    let mut rng = Rng::new(1);
    // Around every tile size (4x8, 6x16, 8x32), K blocks (256), column
    // blocks (1024), k = 0 and 1, primes.
    let shapes = [
        (1, 1, 1),
        (1, 0, 5),
        (3, 1, 7),
        (4, 3, 8),
        (5, 2, 9),
        (6, 17, 16),
        (7, 127, 17),
        (8, 5, 32),
        (9, 31, 33),
        (13, 255, 31),
        (12, 256, 48),
        (17, 257, 15),
        (2, 1031, 3),
        (23, 513, 65),
        (31, 64, 97),
        (3, 40, 1100),
        (9, 300, 1031),
    ];
    for (m, k, n) in shapes {
        check_shape(&mut rng, &isas, m, k, n);
    }
}

#[test]
fn every_path_computes_the_fma_chain_on_random_shapes() {
    let isas = paths();
    let mut rng = Rng::new(2);
    for _ in 0..24 {
        let m = 1 + (rng.next_u64() % 70) as usize;
        let n = 1 + (rng.next_u64() % 90) as usize;
        let k = (rng.next_u64() % 600) as usize;
        check_shape(&mut rng, &isas, m, k, n);
    }
}

#[test]
fn every_path_computes_the_fma_chain_on_parallel_shapes() {
    // Big enough for the parallel path (m·n·k >= PAR_MIN_FLOPS) and for
    // several row and column blocks, none of them whole.
    let isas = paths();
    let mut rng = Rng::new(3);
    check_shape(&mut rng, &isas, 211, 127, 173);
    check_shape(&mut rng, &isas, 67, 1031, 45);
    check_shape(&mut rng, &isas, 37, 270, 1050);
}

#[test]
fn thread_counts_give_identical_bits() {
    // The only test in this binary that changes the (process-wide) thread
    // count; the others are unaffected since bits never depend on it.
    let isas = paths();
    let mut rng = Rng::new(4);
    let (m, k, n) = (263, 301, 199);
    for (ta, tb) in TRANS {
        let (a, b, c0) = (data(&mut rng, m * k), data(&mut rng, k * n), data(&mut rng, m * n));
        let want = bits(&reference(&a, ta, &b, tb, m, k, n, Some(&c0)));
        for &isa in &isas {
            for t in [1, 2, 3] {
                threads::set_num_threads(t).unwrap();
                let mut c = c0.clone();
                isa::with_isa(isa, || matmul(&mut c, &a, ta, &b, tb, m, k, n, true)).unwrap();
                assert!(bits(&c) == want, "{isa} {ta:?}/{tb:?} at {t} threads: differs from the fma chain");
            }
        }
    }
}

#[test]
fn unknown_and_unavailable_paths_are_errors() {
    let err = "sse4".parse::<Isa>().unwrap_err();
    assert!(matches!(err, Error::UnknownIsa(_)));
    assert!(err.to_string().contains("avx512, avx2 or generic"), "{err}");
    assert!(matches!(isa::parse_env_value(Some("AVX-512")), Err(Error::UnknownIsa(_))));
    let lacking: Vec<Isa> = Isa::ALL.into_iter().filter(|isa| !isa.is_available()).collect();
    if lacking.is_empty() {
        eprintln!("skipping the unavailable-path check: this CPU has every path");
    }
    for isa in lacking {
        let err = isa::with_isa(isa, || ()).unwrap_err();
        assert!(matches!(err, Error::IsaUnavailable { wanted, .. } if wanted == isa), "{err}");
        assert!(err.to_string().contains("unset BATON_KERNEL_ISA"), "{err}");
        assert!(isa::parse_env_value(Some(isa.name())).is_err());
    }
    assert_eq!(isa::with_isa(Isa::Generic, isa::current).unwrap(), Isa::Generic);
}

/// Child half of `the_environment_selects_the_process_path`: checks
/// `isa::init()` against `BATON_TEST_EXPECT` (a path name, or `error`).
#[test]
#[ignore = "run by the_environment_selects_the_process_path with the environment it needs"]
fn child_init_from_env() {
    let expect = std::env::var("BATON_TEST_EXPECT").expect("BATON_TEST_EXPECT");
    match (isa::init(), expect.as_str()) {
        (Err(e), "error") => {
            assert!(e.to_string().contains("BATON_KERNEL_ISA"), "{e}");
            let panic = std::panic::catch_unwind(isa::current).unwrap_err();
            assert!(panic.downcast_ref::<String>().is_some_and(|s| *s == e.to_string()));
        }
        (Ok(got), want) => {
            assert_eq!(got.name(), want);
            assert_eq!(isa::current(), got);
        }
        (Err(e), want) => panic!("expected {want}, got error: {e}"),
    }
}

#[test]
fn the_environment_selects_the_process_path() {
    let mut cases = vec![("", Isa::best().name()), ("generic", "generic"), ("avx9", "error")];
    for isa in Isa::ALL {
        cases.push((isa.name(), if isa.is_available() { isa.name() } else { "error" }));
    }
    let exe = std::env::current_exe().unwrap();
    for (value, expect) in cases {
        let out = Command::new(&exe)
            .args(["--exact", "child_init_from_env", "--ignored", "--nocapture"])
            .env("BATON_KERNEL_ISA", value)
            .env("BATON_TEST_EXPECT", expect)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "BATON_KERNEL_ISA={value:?} (want {expect}):\n{log}");
        assert!(log.contains("1 passed"), "child ran no test:\n{log}");
    }
}
