//! The kernels of the CUDA source: names, parameter lists and launch shapes.
//!
//! [`Kernel::params`] is the Rust copy of each kernel's C prototype; every
//! launch checks its arguments against it ([`check_args`]) and a unit test
//! checks it against the source, so an argument list that does not match the
//! C function is an error, never undefined behaviour.

use crate::Result;

use super::backend::DevSlice;
use super::check::invalid;

/// Threads per block of every launch (a multiple of the 32-thread warp, so
/// the 8-lane groups of the row kernels never straddle a partial warp).
pub(crate) const BLOCK: u32 = 256;

/// Threads that cooperate on one row (or one 4096-element block) in the
/// fixed-lane reductions: the CPU's `reduce::LANES`.
pub(crate) const LANES: u32 = crate::reduce::LANES as u32;

/// One kernel parameter's C type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Param {
    /// `const float*`.
    In,
    /// `float*` (written, possibly also read).
    Out,
    /// `const unsigned int*`.
    Idx,
    /// `double*` (written).
    OutF64,
    /// `float` by value.
    F32,
    /// `unsigned int` by value.
    U32,
}

/// A kernel argument; its variant must be the [`Param`] at its position.
/// (Without the `cuda` feature nothing reads the payloads: no launch can run.)
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) enum Arg<'a> {
    In(&'a DevSlice<f32>),
    Out(&'a mut DevSlice<f32>),
    Idx(&'a DevSlice<u32>),
    OutF64(&'a mut DevSlice<f64>),
    F32(f32),
    U32(u32),
}

impl Arg<'_> {
    fn param(&self) -> Param {
        match self {
            Arg::In(_) => Param::In,
            Arg::Out(_) => Param::Out,
            Arg::Idx(_) => Param::Idx,
            Arg::OutF64(_) => Param::OutF64,
            Arg::F32(_) => Param::F32,
            Arg::U32(_) => Param::U32,
        }
    }
}

/// Grid of a launch: `blocks` blocks of [`BLOCK`] threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) blocks: u32,
}

impl Shape {
    /// One thread per item (element, column or row); `items <= i32::MAX`.
    pub(crate) fn threads(items: u32) -> Shape {
        Shape { blocks: items.div_ceil(BLOCK) }
    }

    /// [`LANES`] threads per item (row or sum block).
    pub(crate) fn lane_groups(items: u32) -> Shape {
        Shape { blocks: items.div_ceil(BLOCK / LANES) }
    }
}

macro_rules! kernels {
    ($($variant:ident => $name:literal [$($p:ident),*];)*) => {
        /// Every kernel in the CUDA source.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub(crate) enum Kernel { $($variant,)* }

        impl Kernel {
            /// All kernels, in declaration order (`k as usize` indexes it).
            #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
            pub(crate) const ALL: &'static [Kernel] = &[$(Kernel::$variant,)*];

            /// The `extern "C"` function name in the CUDA source.
            pub(crate) fn name(self) -> &'static str {
                match self { $(Kernel::$variant => $name,)* }
            }

            /// The C prototype's parameter types, in order.
            pub(crate) fn params(self) -> &'static [Param] {
                match self { $(Kernel::$variant => &[$(Param::$p),*],)* }
            }
        }
    };
}

kernels! {
    Add => "baton_add" [In, In, Out, U32];
    AddAssign => "baton_add_assign" [Out, In, U32];
    Scale => "baton_scale" [Out, F32, U32];
    AddBiasRows => "baton_add_bias_rows" [Out, In, U32, U32];
    SumRows => "baton_sum_rows" [In, U32, U32, Out, U32];
    Relu => "baton_relu" [In, Out, U32];
    ReluBackward => "baton_relu_backward" [In, In, Out, U32];
    Gelu => "baton_gelu" [In, Out, U32];
    GeluBackward => "baton_gelu_backward" [In, In, Out, U32];
    Tanh => "baton_tanh" [In, Out, U32];
    TanhBackward => "baton_tanh_backward" [In, In, Out, U32];
    LayernormFwd => "baton_layernorm" [In, In, In, U32, U32, F32, Out, Out];
    LayernormDx => "baton_layernorm_dx" [In, In, In, In, U32, U32, Out];
    LayernormParams => "baton_layernorm_params" [In, In, In, U32, U32, Out, Out, U32];
    MsePartials => "baton_mse_partials" [In, In, U32, OutF64];
    MseBackward => "baton_mse_backward" [In, In, F32, Out, U32];
    CeRows => "baton_ce_rows" [In, Idx, U32, U32, Out, OutF64];
    CeBackward => "baton_ce_backward" [In, Idx, U32, F32, Out, U32];
    SgdPlain => "baton_sgd_plain" [Out, In, F32, F32, U32];
    SgdMomentum => "baton_sgd_momentum" [Out, In, Out, U32, F32, F32, U32, F32, F32, U32];
    Adam => "baton_adam" [Out, In, Out, Out, F32, F32, F32, F32, F32, F32, F32, U32];
    AdamW => "baton_adamw" [Out, In, Out, Out, F32, F32, F32, F32, F32, F32, F32, U32];
    ScaleInto => "baton_scale_into" [In, F32, Out, U32];
    Silu => "baton_silu" [In, Out, U32];
    SiluBackward => "baton_silu_backward" [In, In, Out, U32];
    Softmax => "baton_softmax" [In, U32, U32, U32, Out];
    SoftmaxBackward => "baton_softmax_backward" [In, In, U32, U32, Out];
    Rmsnorm => "baton_rmsnorm" [In, In, U32, U32, F32, Out, Out];
    RmsnormDx => "baton_rmsnorm_dx" [In, In, In, In, U32, U32, Out];
    RmsnormDg => "baton_rmsnorm_dg" [In, In, In, U32, U32, Out];
    Gather => "baton_gather" [In, U32, U32, Idx, U32, Out];
    ScatterAdd => "baton_scatter_add" [In, U32, Idx, U32, U32, Out];
    Dropout => "baton_dropout" [In, U32, U32, U32, U32, F32, Out, U32];
    Transpose => "baton_transpose" [In, U32, U32, U32, U32, U32, Out, U32];
    Narrow => "baton_narrow" [In, U32, U32, U32, Out, U32];
    NarrowBackward => "baton_narrow_backward" [In, U32, U32, U32, Out, U32];
    Place => "baton_place" [In, U32, U32, U32, Out, U32];
    Binary => "baton_binary" [In, In, Out, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32];
    Expand => "baton_expand" [In, Out, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32, U32];
    ReduceTo => "baton_reduce_to" [In, Out, U32, U32, U32, U32, U32, U32, U32, U32, U32];
    SumAll => "baton_sum_all" [In, U32, Out];
    Norm => "baton_norm" [In, U32, Out];
    MeanF64 => "baton_mean_f64" [OutF64, U32, U32, Out];
}

impl Kernel {
    /// Whether the kernel uses only `+ − × ÷ sqrt max` and comparisons, and
    /// so gives the CPU kernel's bits (see the `cuda` module's determinism
    /// notes); the others call CUDA's `erff`/`expf`/`tanhf`/`log`.
    #[cfg_attr(not(all(test, feature = "cuda")), allow(dead_code))]
    pub(crate) fn exact(self) -> bool {
        !matches!(
            self,
            Kernel::Gelu
                | Kernel::GeluBackward
                | Kernel::Tanh
                | Kernel::CeRows
                | Kernel::Silu
                | Kernel::SiluBackward
                | Kernel::Softmax
        )
    }
}

/// Checks that `args` match `k`'s C parameter list one for one.
pub(crate) fn check_args(k: Kernel, args: &[Arg<'_>]) -> Result<()> {
    let got: Vec<Param> = args.iter().map(Arg::param).collect();
    if got == k.params() {
        Ok(())
    } else {
        Err(invalid(k.name(), format!("internal: arguments {got:?} do not match parameters {:?}", k.params())))
    }
}

#[cfg(all(test, feature = "cuda"))]
mod tests {
    use super::*;

    /// The parameter types of `name`'s prototype in the CUDA source.
    fn prototype(src: &str, name: &str) -> Vec<Param> {
        let head = format!("extern \"C\" __global__ void {name}(");
        let start = src.find(&head).unwrap_or_else(|| panic!("{name} missing from the source")) + head.len();
        let list = &src[start..start + src[start..].find(')').unwrap()];
        list.split(',').map(|p| c_type(p.trim().rsplit_once(' ').unwrap().0.trim())).collect()
    }

    fn c_type(t: &str) -> Param {
        match t {
            "const float*" => Param::In,
            "float*" => Param::Out,
            "const u32*" => Param::Idx,
            "double*" => Param::OutF64,
            "float" => Param::F32,
            "u32" => Param::U32,
            other => panic!("unexpected C parameter type {other:?}"),
        }
    }

    #[test]
    fn params_match_the_cuda_prototypes() {
        let src = super::super::source::source();
        for &k in Kernel::ALL {
            assert_eq!(prototype(&src, k.name()), k.params(), "{k:?}");
        }
        let count = src.matches("extern \"C\" __global__").count();
        assert_eq!(count, Kernel::ALL.len(), "every kernel in the source has a Kernel variant");
    }
}
