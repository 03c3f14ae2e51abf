//! Max pooling with a backward for any kernel, stride and padding (candle's `max_pool2d` has a
//! backward only when kernel == stride, so a ResNet stem's 3×3/2 pool cannot train with it).

use super::cpu::{cpu_tensor, storage_f32, with_f32};
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Geometry of a square max pool over `[B, C, H, W]` (torch `nn.MaxPool2d`, `ceil_mode=False`,
/// padding treated as −∞).
#[derive(Debug, Clone, Copy)]
pub(super) struct MaxPool2d {
    pub(super) kernel: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
}

impl MaxPool2d {
    /// Output length of one spatial dim of length `n`: `⌊(n + 2p − k)/s⌋ + 1`.
    pub(super) fn out_len(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// The valid input range `[start, end)` of output position `o` along a dim of length `n`.
    fn window(&self, o: usize, n: usize) -> (usize, usize) {
        let start = (o * self.stride) as isize - self.padding as isize;
        let end = (start + self.kernel as isize).min(n as isize);
        (start.max(0) as usize, end.max(0) as usize)
    }

    /// Flat index (within the plane) of the first maximum of output `(oy, ox)`'s window, as
    /// PyTorch picks it (row-major scan, strictly greater replaces; NaN wins).
    fn argmax(&self, plane: &[f32], (h, w): (usize, usize), oy: usize, ox: usize) -> usize {
        let (y0, y1) = self.window(oy, h);
        let (x0, x1) = self.window(ox, w);
        let mut best = y0 * w + x0;
        let mut best_v = f32::NEG_INFINITY;
        for y in y0..y1 {
            for x in x0..x1 {
                let v = plane[y * w + x];
                if v > best_v || v.is_nan() {
                    best_v = v;
                    best = y * w + x;
                    if v.is_nan() {
                        return best;
                    }
                }
            }
        }
        best
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "max-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(self.name(), storage, layout)?;
        let (b, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = (self.out_len(h), self.out_len(w));
        let mut y = vec![0.0f32; b * c * oh * ow];
        if !y.is_empty() {
            y.par_chunks_mut(oh * ow)
                .zip(x.par_chunks(h * w))
                .for_each(|(out, plane)| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            out[oy * ow + ox] = plane[self.argmax(plane, (h, w), oy, ox)];
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(y), Shape::from((b, c, oh, ow))))
    }

    /// The gradient of each output goes to the input element its window's maximum came from.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let (_, _, oh, ow) = grad_res.dims4()?;
        let dx = with_f32(self.name(), arg, |x| {
            with_f32(self.name(), grad_res, |dy| {
                let mut dx = vec![0.0f32; x.len()];
                if !dx.is_empty() {
                    dx.par_chunks_mut(h * w)
                        .zip(x.par_chunks(h * w).zip(dy.par_chunks(oh * ow)))
                        .for_each(|(dx, (plane, dy))| {
                            for oy in 0..oh {
                                for ox in 0..ow {
                                    dx[self.argmax(plane, (h, w), oy, ox)] += dy[oy * ow + ox];
                                }
                            }
                        });
                }
                Ok(dx)
            })
        })?;
        Ok(Some(cpu_tensor(dx, arg.shape())?))
    }
}
