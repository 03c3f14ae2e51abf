//! Element-wise updates fused into one in-place pass over contiguous CPU `f32` storage, and the
//! device-agnostic tensor helpers shared by the optimizers and the EMA teacher.
//!
//! The optimizers update every parameter at every step; on CPU `f32` (the common case) each updated
//! tensor is read and written once, with the arithmetic written as PyTorch's kernels order it.
//! Other devices and dtypes go through ordinary tensor ops.

use candle_core::{
    bail, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Storage, Tensor,
};

/// Whether `t` takes the fused CPU `f32` path.
pub(crate) fn fused_cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The contiguous `f32` elements of a CPU storage.
fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => bail!("{op}: expected a contiguous f32 cpu tensor"),
    }
}

/// The contiguous `f32` elements of a CPU storage, writable.
fn f32_slice_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&mut v[start..end]),
        _ => bail!("{op}: expected a contiguous f32 cpu tensor"),
    }
}

/// Fails unless every operand has the destination's length.
fn same_len(op: &str, dst: usize, srcs: &[usize]) -> Result<()> {
    match srcs.iter().find(|&&n| n != dst) {
        Some(n) => bail!("{op}: operand of {n} elements for a destination of {dst}"),
        None => Ok(()),
    }
}

/// In-place `dst[i] = f(dst[i], a[i])`.
struct Map2<F>(&'static str, F);

impl<F: Fn(f32, f32) -> f32> InplaceOp2 for Map2<F> {
    fn name(&self) -> &'static str {
        self.0
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let dst = f32_slice_mut(s1, l1, self.0)?;
        let a = f32_slice(s2, l2, self.0)?;
        same_len(self.0, dst.len(), &[a.len()])?;
        dst.iter_mut()
            .zip(a)
            .for_each(|(d, &a)| *d = (self.1)(*d, a));
        Ok(())
    }
}

/// In-place `dst[i] = f(dst[i], a[i], b[i])`.
struct Map3<F>(&'static str, F);

impl<F: Fn(f32, f32, f32) -> f32> InplaceOp3 for Map3<F> {
    fn name(&self) -> &'static str {
        self.0
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let dst = f32_slice_mut(s1, l1, self.0)?;
        let a = f32_slice(s2, l2, self.0)?;
        let b = f32_slice(s3, l3, self.0)?;
        same_len(self.0, dst.len(), &[a.len(), b.len()])?;
        dst.iter_mut()
            .zip(a.iter().zip(b))
            .for_each(|(d, (&a, &b))| *d = (self.1)(*d, a, b));
        Ok(())
    }
}

/// Applies `dst[i] = f(dst[i], a[i])` in place on contiguous CPU `f32` tensors.
pub(crate) fn map2_inplace(
    name: &'static str,
    dst: &Tensor,
    a: &Tensor,
    f: impl Fn(f32, f32) -> f32,
) -> Result<()> {
    dst.inplace_op2(&a.contiguous()?, &Map2(name, f))
}

/// Applies `dst[i] = f(dst[i], a[i], b[i])` in place on contiguous CPU `f32` tensors.
pub(crate) fn map3_inplace(
    name: &'static str,
    dst: &Tensor,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32, f32) -> f32,
) -> Result<()> {
    dst.inplace_op3(&a.contiguous()?, &b.contiguous()?, &Map3(name, f))
}

/// torch `lerp`: `start + w (end - start)` for `w < 0.5`, else `end - (end - start)(1 - w)`.
pub(crate) fn lerp_f32(start: f32, end: f32, weight: f32) -> f32 {
    if weight < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// torch `lerp` on whole tensors of any device and dtype (same formula as [`lerp_f32`]).
pub(crate) fn lerp_tensor(start: &Tensor, end: &Tensor, weight: f64) -> Result<Tensor> {
    let diff = (end - start)?;
    if weight < 0.5 {
        start + (diff * weight)?
    } else {
        end - (diff * (1.0 - weight))?
    }
}

/// A copy of `t` with its own storage and no gradient tracking.
pub(crate) fn deep_copy(t: &Tensor) -> Result<Tensor> {
    t.detach().contiguous()?.copy()
}

/// Writes the values of `src` into the storage of `dst` (same shape and dtype), so that every
/// clone of `dst` sees them.
pub(crate) fn assign_in_place(dst: &Tensor, src: &Tensor) -> Result<()> {
    if dst.dims() != src.dims() {
        bail!("assign: shape {:?} into {:?}", src.dims(), dst.dims())
    }
    let src = src.to_device(dst.device())?.to_dtype(dst.dtype())?;
    dst.flatten_all()?
        .slice_set(&src.contiguous()?.flatten_all()?, 0, 0)
}

/// `sum(g^2)` accumulated in `f64`.
pub(crate) fn sum_squares(g: &Tensor) -> Result<f64> {
    {
        let (storage, layout) = g.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(v[start..end]
                .iter()
                .map(|&x| f64::from(x) * f64::from(x))
                .sum());
        }
    }
    g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn lerp_branches_match_tensor_version() -> Result<()> {
        let start = [0.25f32, -1.5, 3.0, 7.0];
        let end = [1.0f32, 2.5, -3.0, 7.5];
        let a = Tensor::new(&start, &Device::Cpu)?;
        let b = Tensor::new(&end, &Device::Cpu)?;
        for w in [0.001f32, 0.1, 0.5, 0.7] {
            let t = lerp_tensor(&a, &b, f64::from(w))?.to_vec1::<f32>()?;
            for i in 0..start.len() {
                assert_eq!(t[i], lerp_f32(start[i], end[i], w), "w={w} i={i}");
            }
        }
        assert_eq!(lerp_f32(2.0, 4.0, 1.0), 4.0);
        assert_eq!(lerp_f32(2.0, 4.0, 0.0), 2.0);
        Ok(())
    }

    #[test]
    fn in_place_maps_write_through_clones() -> Result<()> {
        let dst = Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu)?;
        let view = dst.clone();
        let a = Tensor::new(&[10.0f32, 20.0, 30.0], &Device::Cpu)?;
        map2_inplace("test-add", &dst, &a, |d, a| d + a)?;
        assert_eq!(view.to_vec1::<f32>()?, [11.0, 22.0, 33.0]);
        map3_inplace("test-fma", &dst, &a, &a, |d, a, b| d - a * b / 10.0)?;
        assert_eq!(view.to_vec1::<f32>()?, [1.0, -18.0, -57.0]);
        let short = Tensor::new(&[1.0f32], &Device::Cpu)?;
        assert!(map2_inplace("test-len", &dst, &short, |d, _| d).is_err());
        let f64s = Tensor::new(&[1.0f64, 2.0, 3.0], &Device::Cpu)?;
        assert!(map2_inplace("test-dtype", &f64s, &a, |d, _| d).is_err());
        Ok(())
    }

    #[test]
    fn assign_and_copy() -> Result<()> {
        let dst = Tensor::zeros((2, 2), DType::F32, &Device::Cpu)?;
        let view = dst.clone();
        let src = Tensor::new(&[[1.0f64, 2.0], [3.0, 4.0]], &Device::Cpu)?;
        assign_in_place(&dst, &src.t()?)?;
        assert_eq!(view.to_vec2::<f32>()?, [[1.0, 3.0], [2.0, 4.0]]);
        assert!(assign_in_place(&dst, &src.flatten_all()?).is_err());
        let copy = deep_copy(&dst)?;
        assign_in_place(&dst, &Tensor::zeros((2, 2), DType::F32, &Device::Cpu)?)?;
        assert_eq!(copy.to_vec2::<f32>()?, [[1.0, 3.0], [2.0, 4.0]]);
        let scalar = Tensor::new(1.5f32, &Device::Cpu)?;
        assign_in_place(&scalar, &Tensor::new(-2.0f32, &Device::Cpu)?)?;
        assert_eq!(scalar.to_scalar::<f32>()?, -2.0);
        Ok(())
    }

    #[test]
    fn sum_squares_in_f64() -> Result<()> {
        let x = Tensor::new(&[[3.0f32, 4.0], [1.0, 2.0]], &Device::Cpu)?;
        assert_eq!(sum_squares(&x)?, 30.0);
        assert_eq!(sum_squares(&x.t()?)?, 30.0);
        assert_eq!(sum_squares(&x.to_dtype(DType::F64)?)?, 30.0);
        let big = Tensor::new(&[1e20f32, 1e20], &Device::Cpu)?;
        assert!(sum_squares(&big)?.is_finite());
        Ok(())
    }
}
