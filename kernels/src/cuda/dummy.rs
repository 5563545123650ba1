//! Stand-in for the device in builds without the `cuda` feature. No
//! [`Device`] or [`DevSlice`] can exist (both hold an uninhabited value), so
//! every method but [`Device::new`] is unreachable and says so by type.

use std::convert::Infallible;
use std::marker::PhantomData;

use super::gemm::ColMajorGemm;
use super::kernel::{Arg, Kernel, Shape};
use crate::{Error, Result};

/// Never constructed: [`Device::new`] always fails.
pub(crate) struct Device(Infallible);

/// Never constructed: only a [`Device`] makes buffers.
pub(crate) struct DevSlice<T>(Infallible, PhantomData<T>);

impl<T> DevSlice<T> {
    pub(crate) fn len(&self) -> usize {
        match self.0 {}
    }
}

impl Device {
    pub(crate) fn new(_ordinal: usize) -> Result<Device> {
        Err(Error::CudaNotCompiled)
    }

    pub(crate) fn ordinal(&self) -> usize {
        match self.0 {}
    }

    pub(crate) fn name(&self) -> String {
        match self.0 {}
    }

    pub(crate) fn upload<T>(&self, _host: &[T]) -> Result<DevSlice<T>> {
        match self.0 {}
    }

    pub(crate) fn zeros<T>(&self, _n: usize) -> Result<DevSlice<T>> {
        match self.0 {}
    }

    pub(crate) fn download<T>(&self, _s: &DevSlice<T>) -> Result<Vec<T>> {
        match self.0 {}
    }

    pub(crate) fn copy<T>(&self, _s: &DevSlice<T>) -> Result<DevSlice<T>> {
        match self.0 {}
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn gemm_batched(
        &self,
        _g: &ColMajorGemm,
        _batch: u32,
        _strides: (i64, i64, i64),
        _a: &DevSlice<f32>,
        _b: &DevSlice<f32>,
        _c: &mut DevSlice<f32>,
        _accumulate: bool,
    ) -> Result<()> {
        match self.0 {}
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        match self.0 {}
    }

    pub(crate) fn fill_zero(&self, _s: &mut DevSlice<f32>) -> Result<()> {
        match self.0 {}
    }

    pub(crate) fn launch(&self, _k: Kernel, _shape: Shape, _args: &mut [Arg<'_>]) -> Result<()> {
        match self.0 {}
    }

    pub(crate) fn gemm(
        &self,
        _g: &ColMajorGemm,
        _a: &DevSlice<f32>,
        _b: &DevSlice<f32>,
        _c: &mut DevSlice<f32>,
        _accumulate: bool,
    ) -> Result<()> {
        match self.0 {}
    }
}
