//! CPU f32 data access and the row partition shared by the custom ops.

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
