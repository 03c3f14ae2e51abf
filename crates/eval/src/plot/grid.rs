//! Image grids (OpenMixup's mix plots): rows of captioned tiles — images in [0, 1], or
//! attention maps over a patch grid drawn as heat maps on their images.

use super::{encode_rgb, text, write_atomic, Canvas, PlotError};
use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_7X13_BOLD};
use embedded_graphics::prelude::*;
use embedded_graphics::text::{Alignment, Baseline};
use std::path::Path;

/// One tile: RGB pixels and a caption drawn under it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tile {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// RGB bytes, row-major.
    pub rgb: Vec<u8>,
    /// Text under the tile.
    pub caption: String,
}

/// The RGB bytes of an image `[C, H, W]` in [0, 1] (gray when `C = 1`; the first three
/// channels otherwise).
fn to_rgb(image: &[f32], (c, h, w): (usize, usize, usize)) -> Vec<u8> {
    let byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    let mut out = Vec::with_capacity(h * w * 3);
    for p in 0..h * w {
        for k in 0..3 {
            let ch = if c >= 3 { k } else { 0 };
            out.push(byte(image[ch * h * w + p]));
        }
    }
    out
}

/// Matplotlib's `viridis` at `t` in [0, 1] (linear between 5 of its colors).
fn viridis(t: f32) -> [f32; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [68.0, 1.0, 84.0],
        [59.0, 82.0, 139.0],
        [33.0, 145.0, 140.0],
        [94.0, 201.0, 98.0],
        [253.0, 231.0, 37.0],
    ];
    let x = t.clamp(0.0, 1.0) * 4.0;
    let i = (x.floor() as usize).min(3);
    let f = x - i as f32;
    std::array::from_fn(|k| STOPS[i][k] + f * (STOPS[i + 1][k] - STOPS[i][k]))
}

impl Tile {
    /// An image `[C, H, W]` with values in [0, 1].
    pub fn image(image: &[f32], shape: (usize, usize, usize), caption: impl Into<String>) -> Self {
        let (_, h, w) = shape;
        Self {
            width: w,
            height: h,
            rgb: to_rgb(image, shape),
            caption: caption.into(),
        }
    }

    /// An attention map over a `gh × gw` grid of positions, normalized to its maximum, as a
    /// heat map blended (weight `alpha`) over its image `[C, H, W]`; each position covers its
    /// patch of the image.
    pub fn attention(
        image: &[f32],
        shape: (usize, usize, usize),
        attn: &[f32],
        (gh, gw): (usize, usize),
        alpha: f32,
        caption: impl Into<String>,
    ) -> Self {
        let (_, h, w) = shape;
        let base = to_rgb(image, shape);
        let max = attn.iter().cloned().fold(f32::MIN_POSITIVE, f32::max);
        let mut rgb = Vec::with_capacity(base.len());
        for y in 0..h {
            for x in 0..w {
                let a = attn[(y * gh / h) * gw + x * gw / w] / max;
                let heat = viridis(a);
                for k in 0..3 {
                    let v = (1.0 - alpha) * f32::from(base[(y * w + x) * 3 + k]) + alpha * heat[k];
                    rgb.push(v.round().clamp(0.0, 255.0) as u8);
                }
            }
        }
        Self {
            width: w,
            height: h,
            rgb,
            caption: caption.into(),
        }
    }
}

/// A titled grid of named rows of tiles, each tile magnified by an integer `scale`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageGrid {
    title: String,
    scale: usize,
    rows: Vec<(String, Vec<Tile>)>,
}

const MARGIN: usize = 8;
const LABEL_W: usize = 150;
const TITLE_H: usize = 24;
const CAPTION_H: usize = 14;

impl ImageGrid {
    /// An empty grid.
    pub fn new(title: impl Into<String>, scale: usize) -> Self {
        Self {
            title: title.into(),
            scale: scale.max(1),
            rows: Vec::new(),
        }
    }

    /// Append a row named `name`.
    pub fn row(mut self, name: impl Into<String>, tiles: Vec<Tile>) -> Self {
        self.rows.push((name.into(), tiles));
        self
    }

    fn cell(&self) -> (usize, usize) {
        let tiles = self.rows.iter().flat_map(|(_, t)| t);
        let w = tiles.clone().map(|t| t.width).max().unwrap_or(1) * self.scale;
        let h = tiles.map(|t| t.height).max().unwrap_or(1) * self.scale;
        (w.max(60), h)
    }

    /// The grid's size and RGB pixels; a tile whose pixels do not fill its size is an error.
    pub fn render(&self) -> Result<(u32, u32, Vec<u8>), PlotError> {
        let tiles = self.rows.iter().flat_map(|(_, t)| t);
        if let Some(t) = tiles
            .clone()
            .find(|t| t.rgb.len() != t.width * t.height * 3)
        {
            return Err(PlotError::InvalidImages(format!(
                "tile `{}` has {} bytes for {}x{} RGB pixels",
                t.caption,
                t.rgb.len(),
                t.width,
                t.height
            )));
        }
        let (cw, ch) = self.cell();
        let cols = self.rows.iter().map(|(_, t)| t.len()).max().unwrap_or(0);
        let width = LABEL_W + cols * (cw + MARGIN) + MARGIN;
        let height = TITLE_H + self.rows.len() * (ch + CAPTION_H + MARGIN) + MARGIN;
        let mut canvas = Canvas::new(width as u32, height as u32);
        let mid = |x: usize| Point::new(x as i32, 0);
        text(
            &mut canvas,
            &self.title,
            mid(width / 2) + Point::new(0, 6),
            &FONT_7X13_BOLD,
            Alignment::Center,
            Baseline::Top,
        );
        for (r, (name, tiles)) in self.rows.iter().enumerate() {
            let top = TITLE_H + r * (ch + CAPTION_H + MARGIN);
            text(
                &mut canvas,
                name,
                Point::new(MARGIN as i32, (top + ch / 2) as i32),
                &FONT_6X10,
                Alignment::Left,
                Baseline::Middle,
            );
            for (c, tile) in tiles.iter().enumerate() {
                let left = LABEL_W + c * (cw + MARGIN);
                for y in 0..tile.height * self.scale {
                    for x in 0..tile.width * self.scale {
                        let i = ((y / self.scale) * tile.width + x / self.scale) * 3;
                        let px = &tile.rgb[i..i + 3];
                        let o = ((top + y) * width + left + x) * 3;
                        canvas.pixels[o..o + 3].copy_from_slice(px);
                    }
                }
                text(
                    &mut canvas,
                    &tile.caption,
                    Point::new(
                        (left + tile.width * self.scale / 2) as i32,
                        (top + ch + 2) as i32,
                    ),
                    &FONT_6X10,
                    Alignment::Center,
                    Baseline::Top,
                );
            }
        }
        Ok((width as u32, height as u32, canvas.pixels))
    }

    /// Write the grid as a PNG, atomically.
    pub fn save_png(&self, path: &Path) -> Result<(), PlotError> {
        let (w, h, pixels) = self.render()?;
        write_atomic(path, &encode_rgb(w, h, &pixels)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_placed_scaled_in_their_rows() {
        let white = Tile::image(&[1.0; 4], (1, 2, 2), "w");
        let red = Tile {
            width: 1,
            height: 1,
            rgb: vec![255, 0, 0],
            caption: "r".into(),
        };
        let grid = ImageGrid::new("t", 3)
            .row("a", vec![white.clone(), white])
            .row("b", vec![red]);
        let (w, h, px) = grid.render().unwrap();
        assert_eq!(
            w as usize,
            LABEL_W + 2 * (60 + MARGIN) + MARGIN,
            "cells are at least 60 wide"
        );
        assert_eq!(h as usize, TITLE_H + 2 * (6 + CAPTION_H + MARGIN) + MARGIN);
        // The red 1x1 tile, scaled 3x, fills 3x3 pixels at the first cell of row 2.
        let top = TITLE_H + 6 + CAPTION_H + MARGIN;
        for (y, x) in [(top, LABEL_W), (top + 2, LABEL_W + 2)] {
            let o = (y * w as usize + x) * 3;
            assert_eq!(&px[o..o + 3], &[255, 0, 0]);
        }
        let o = ((top + 3) * w as usize + LABEL_W) * 3;
        assert_ne!(&px[o..o + 3], &[255, 0, 0], "not beyond the scaled tile");
        let broken = ImageGrid::new("t", 1).row(
            "a",
            vec![Tile {
                rgb: vec![0; 5],
                ..Tile::image(&[0.0], (1, 1, 1), "x")
            }],
        );
        assert!(matches!(broken.render(), Err(PlotError::InvalidImages(_))));
    }

    #[test]
    fn attention_maps_cover_their_patches() {
        // A 2x2 grid of positions on a 4x4 image: the hot position colors its 2x2 patch.
        let tile = Tile::attention(
            &[0.0; 16],
            (1, 4, 4),
            &[0.0, 0.0, 0.0, 1.0],
            (2, 2),
            1.0,
            "a",
        );
        let px = |y: usize, x: usize| tile.rgb[(y * 4 + x) * 3..][..3].to_vec();
        assert_eq!(px(3, 3), vec![253, 231, 37], "viridis(1)");
        assert_eq!(px(2, 2), vec![253, 231, 37]);
        assert_eq!(px(0, 0), vec![68, 1, 84], "viridis(0)");
    }
}
