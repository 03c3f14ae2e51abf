//! CPU f32 data access and the row partition shared by the custom ops.

use rayon::prelude::*;
use std::mem::MaybeUninit;

use candle_core::{
    CpuStorage, Device, DeviceLocation, Error, Layout, Result, Shape, Storage, Tensor,
};

/// Elements below which a parallel task is not worth its scheduling cost.
const MIN_TASK_ELEMS: usize = 8 * 1024;
/// Parallel tasks per rayon thread, so a busy core does not stall the others.
const TASKS_PER_THREAD: usize = 8;

/// Rows per parallel task for `rows` rows of `row_len` elements (at least 1).
pub(super) fn task_rows(rows: usize, row_len: usize) -> usize {
    let tasks = TASKS_PER_THREAD * rayon::current_num_threads();
    let by_tasks = rows.div_ceil(tasks);
    let by_size = MIN_TASK_ELEMS.div_ceil(row_len.max(1));
    by_tasks.max(by_size).max(1)
}

/// `(rows, row_len)` of a shape seen as `[rows, last dim]`.
pub(super) fn rows_and_len(shape: &Shape) -> (usize, usize) {
    let len = shape.dims().last().copied().unwrap_or(1);
    let rows = shape.elem_count().checked_div(len).unwrap_or(0);
    (rows, len)
}

/// The f32 elements of a storage seen through a contiguous layout.
pub(super) fn storage_f32<'a>(
    op: &'static str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or(Error::RequiresContiguous { op })?;
    Ok(&data[start..end])
}

/// Runs `f` on the f32 elements of the CPU tensor `t` in row-major order (copied only if `t` is
/// not contiguous).
pub(super) fn with_f32<R>(
    op: &'static str,
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(storage_f32(op, cpu, layout)?),
        _ => Err(Error::DeviceMismatchBinaryOp {
            lhs: t.device().location(),
            rhs: DeviceLocation::Cpu,
            op,
        }
        .bt()),
    }
}

/// A CPU tensor of shape `shape` holding `data` (no copy).
pub(super) fn cpu_tensor(data: Vec<f32>, shape: &Shape) -> Result<Tensor> {
    Tensor::from_vec(data, shape.clone(), &Device::Cpu)
}

/// A vector of `len` f32 that `fill` writes through the vector's uninitialized capacity: no
/// zero-fill first. An op's output zeroed before the op overwrites it costs one more pass over
/// memory as large as the output (glibc's `calloc` cannot skip it for reused memory): a CIFAR
/// ResNet-18's FGSM batch of 250 went from 6.44 to 5.86 s without it (BENCHMARKS.md).
///
/// # Safety
/// `fill` must write every one of the `len` elements.
pub(super) unsafe fn filled_vec(
    len: usize,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> Vec<f32> {
    let mut v = uninit_vec(len);
    fill(&mut v);
    // SAFETY: the caller guarantees `fill` initialized every element.
    unsafe { assume_init_vec(v) }
}

/// A vector of `len` f32 written in parallel chunks of `step` elements (the last may be
/// shorter): `f(chunk, start)` gets the uninitialized chunk that begins at element `start`.
///
/// # Safety
/// `f` must write every element of the chunk it gets.
pub(super) unsafe fn filled_chunks(
    len: usize,
    step: usize,
    f: impl Fn(&mut [MaybeUninit<f32>], usize) + Sync,
) -> Vec<f32> {
    let step = step.max(1);
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(step)
            .enumerate()
            .for_each(|(i, chunk)| f(chunk, i * step));
    };
    // SAFETY: the chunks cover the vector, and the caller guarantees `f` writes each whole.
    unsafe { filled_vec(len, fill) }
}

/// `len` uninitialized f32.
pub(super) fn uninit_vec(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut v = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`, and `MaybeUninit` needs no initialization.
    unsafe { v.set_len(len) };
    v
}

/// The vector `v` as initialized values, without a copy.
///
/// # Safety
/// Every element of `v` must be initialized.
pub(super) unsafe fn assume_init_vec(v: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut v = std::mem::ManuallyDrop::new(v);
    let (ptr, len, capacity) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, the allocation (pointer, length,
    // capacity) passes whole to the new vector and is not dropped by the old one, and the caller
    // guarantees every element is initialized.
    unsafe { Vec::from_raw_parts(ptr.cast::<f32>(), len, capacity) }
}

/// Writes `values` into `out` (`out.len() == values.len()`) and returns it as initialized.
pub(super) fn write_slice<'a>(out: &'a mut [MaybeUninit<f32>], values: &[f32]) -> &'a mut [f32] {
    out.write_copy_of_slice(values);
    // SAFETY: every element of `out` was just written.
    unsafe { assume_init(out) }
}

/// Zeroes `out` and returns it as initialized (for kernels that accumulate into a small,
/// cache-resident piece of an output).
pub(super) fn write_zeros(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for v in out.iter_mut() {
        v.write(0.0);
    }
    // SAFETY: every element of `out` was just written.
    unsafe { assume_init(out) }
}

/// `out` seen as initialized.
///
/// # Safety
/// Every element of `out` must be initialized.
#[inline(always)]
pub(super) unsafe fn assume_init(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the caller guarantees every
    // element is initialized.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}
