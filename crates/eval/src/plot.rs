//! Small PNG plots for reports: line plots, scatter plots and bars on linear axes with tick
//! labels, axis labels, a title and a legend.
//!
//! Why `embedded-graphics` + `png` rather than `plotters`: plotters' bitmap backend needs a
//! TrueType font, either found on the system (there may be none, e.g. in CI containers) or
//! embedded through `ab_glyph` from a font file the repository would have to carry with its
//! license. `embedded-graphics` ships the X11 "misc-fixed" bitmap fonts (public domain) compiled
//! in, draws lines, circles and rectangles on any pixel buffer, has no system dependency and
//! builds in seconds; `png` (the `image-rs` encoder) writes the file. The result works offline
//! and renders the same on every machine, and the layout code here (ticks, legend) is small.
//!
//! ```no_run
//! use multimix_eval::plot::{Figure, Legend};
//! let fig = Figure::new("Accuracy under attack")
//!     .labels("eps (x 255)", "accuracy")
//!     .y_range(0.0, 1.0)
//!     .line("FGSM", vec![(0.0, 0.9), (8.0, 0.4)])
//!     .legend(Legend::UpperRight);
//! fig.save_png("acc.png".as_ref()).unwrap();
//! ```
//!
//! [`grid::ImageGrid`] tiles captioned images (e.g. mixed samples) into one PNG.

use embedded_graphics::mono_font::ascii::{FONT_6X10, FONT_7X13, FONT_7X13_BOLD};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Circle, Line, PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};
use std::convert::Infallible;
use std::path::Path;

pub mod grid;

/// An RGB color.
pub type Color = [u8; 3];

/// matplotlib's `tab10` palette: series without an explicit color take these in turn.
pub const PALETTE: [Color; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];

/// Gray for reference lines (a diagonal, chance level).
pub const GRAY: Color = [127, 127, 127];

/// An error while drawing or writing a plot.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// The figure is too small to hold axes.
    #[error("a figure of {width}x{height} pixels is too small (at least 160x120)")]
    TooSmall {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// An axis range is empty or not finite.
    #[error("invalid {axis} range [{min}, {max}]: need finite min < max")]
    InvalidRange {
        /// "x" or "y".
        axis: &'static str,
        /// Lower end.
        min: f64,
        /// Upper end.
        max: f64,
    },
    /// PNG encoding failed.
    #[error("encoding PNG: {0}")]
    Encode(#[from] png::EncodingError),
    /// Images of an image grid do not match their shape.
    #[error("image grid: {0}")]
    InvalidImages(String),
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Where the legend box goes (inside the plot area).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Legend {
    /// No legend.
    None,
    /// Top left corner.
    UpperLeft,
    /// Top right corner.
    UpperRight,
    /// Bottom left corner.
    LowerLeft,
    /// Bottom right corner.
    LowerRight,
}

/// How a series is drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Mark {
    /// Points joined by straight segments, solid or dashed.
    Line {
        /// Dashed instead of solid.
        dashed: bool,
    },
    /// Filled dots of `radius` pixels.
    Scatter {
        /// Dot radius in pixels.
        radius: u32,
    },
    /// Vertical bars centered at each x, from `bottom` (per bar, see [`Series::bottoms`]) to y,
    /// `width` wide in x units.
    Bars {
        /// Bar width in x units.
        width: f64,
    },
}

/// One data series.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry (empty: not in the legend).
    pub name: String,
    /// Data points `(x, y)`; non-finite points are skipped.
    pub points: Vec<(f64, f64)>,
    /// For bars: the lower end of each bar (0 when empty).
    pub bottoms: Vec<f64>,
    /// How it is drawn.
    pub mark: Mark,
    /// Its color (`None`: the next palette color).
    pub color: Option<Color>,
    /// Opacity in [0, 1] (1 = opaque).
    pub opacity: f64,
}

/// A figure: linear axes, a title, axis labels, series and a legend.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    title: String,
    x_label: String,
    y_label: String,
    width: u32,
    height: u32,
    x_range: Option<(f64, f64)>,
    y_range: Option<(f64, f64)>,
    series: Vec<Series>,
    legend: Legend,
}

impl Figure {
    /// An empty 640×480 figure with a title, legend in the upper right corner.
    pub fn new(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: String::new(),
            y_label: String::new(),
            width: 640,
            height: 480,
            x_range: None,
            y_range: None,
            series: Vec::new(),
            legend: Legend::UpperRight,
        }
    }

    /// Set the x and y axis labels.
    pub fn labels(mut self, x: impl Into<String>, y: impl Into<String>) -> Self {
        self.x_label = x.into();
        self.y_label = y.into();
        self
    }

    /// Set the size in pixels.
    pub fn size(mut self, width: u32, height: u32) -> Self {
        self.width = width;
        self.height = height;
        self
    }

    /// Fix the x range (default: the data's, padded by 5 %).
    pub fn x_range(mut self, min: f64, max: f64) -> Self {
        self.x_range = Some((min, max));
        self
    }

    /// Fix the y range (default: the data's, padded by 5 %).
    pub fn y_range(mut self, min: f64, max: f64) -> Self {
        self.y_range = Some((min, max));
        self
    }

    /// Place the legend.
    pub fn legend(mut self, legend: Legend) -> Self {
        self.legend = legend;
        self
    }

    /// Add a series.
    pub fn series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Add a solid line in the next palette color.
    pub fn line(self, name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        self.series(Series {
            name: name.into(),
            points,
            bottoms: Vec::new(),
            mark: Mark::Line { dashed: false },
            color: None,
            opacity: 1.0,
        })
    }

    /// Add a dashed gray reference line (e.g. the diagonal of a ROC curve).
    pub fn reference_line(self, name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        self.series(Series {
            name: name.into(),
            points,
            bottoms: Vec::new(),
            mark: Mark::Line { dashed: true },
            color: Some(GRAY),
            opacity: 1.0,
        })
    }

    /// Add a scatter series of 2-pixel dots in the next palette color.
    pub fn scatter(self, name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        self.series(Series {
            name: name.into(),
            points,
            bottoms: Vec::new(),
            mark: Mark::Scatter { radius: 2 },
            color: None,
            opacity: 1.0,
        })
    }

    /// Add bars from 0 to each y, `width` wide in x units, in the next palette color.
    pub fn bars(self, name: impl Into<String>, points: Vec<(f64, f64)>, width: f64) -> Self {
        self.series(Series {
            name: name.into(),
            points,
            bottoms: Vec::new(),
            mark: Mark::Bars { width },
            color: None,
            opacity: 1.0,
        })
    }

    /// The figure as RGB pixels, row-major, `width × height × 3` bytes.
    pub fn render(&self) -> Result<Vec<u8>, PlotError> {
        if self.width < 160 || self.height < 120 {
            return Err(PlotError::TooSmall {
                width: self.width,
                height: self.height,
            });
        }
        let x_range = resolve_range("x", self.x_range, self.data_extent(|p| p.0, false))?;
        let y_range = resolve_range("y", self.y_range, self.data_extent(|p| p.1, true))?;
        let mut canvas = Canvas::new(self.width, self.height);
        let area = Rectangle::new(
            Point::new(MARGIN_LEFT, MARGIN_TOP),
            Size::new(
                self.width - (MARGIN_LEFT + MARGIN_RIGHT) as u32,
                self.height - (MARGIN_TOP + MARGIN_BOTTOM) as u32,
            ),
        );
        let axes = Axes {
            area,
            x: x_range,
            y: y_range,
        };
        self.draw_frame(&mut canvas, &axes);
        // The frame's own lines belong to the plot area: curves along an edge stay visible.
        canvas.clip = Some(Rectangle::new(area.top_left, area.size + Size::new(1, 1)));
        for (index, series) in self.series.iter().enumerate() {
            canvas.opacity = series.opacity.clamp(0.0, 1.0);
            draw_series(&mut canvas, &axes, series, self.color_of(index));
        }
        canvas.opacity = 1.0;
        canvas.clip = None;
        self.draw_legend(&mut canvas, &axes);
        Ok(canvas.pixels)
    }

    /// The figure encoded as PNG.
    pub fn to_png(&self) -> Result<Vec<u8>, PlotError> {
        encode_rgb(self.width, self.height, &self.render()?)
    }

    /// Write the PNG to `path` atomically (a temporary file in the same directory, then a
    /// rename), so an existing file is either kept or replaced whole.
    pub fn save_png(&self, path: &Path) -> Result<(), PlotError> {
        write_atomic(path, &self.to_png()?)
    }

    /// The color of series `index`: its own, or the next palette color among those without one.
    fn color_of(&self, index: usize) -> Color {
        match self.series[index].color {
            Some(c) => c,
            None => {
                let rank = self.series[..index]
                    .iter()
                    .filter(|s| s.color.is_none())
                    .count();
                PALETTE[rank % PALETTE.len()]
            }
        }
    }

    /// Smallest and largest finite coordinate over all series (bars include their bottoms,
    /// and their width along x).
    fn data_extent(&self, coord: impl Fn(&(f64, f64)) -> f64, is_y: bool) -> Option<(f64, f64)> {
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for s in &self.series {
            for (i, p) in s.points.iter().enumerate() {
                if !(p.0.is_finite() && p.1.is_finite()) {
                    continue;
                }
                let v = coord(p);
                let (a, b) = match (&s.mark, is_y) {
                    (Mark::Bars { width }, false) => (v - width / 2.0, v + width / 2.0),
                    (Mark::Bars { .. }, true) => {
                        let bottom = s.bottoms.get(i).copied().unwrap_or(0.0);
                        (v.min(bottom), v.max(bottom))
                    }
                    _ => (v, v),
                };
                lo = lo.min(a);
                hi = hi.max(b);
            }
        }
        (lo <= hi).then_some((lo, hi))
    }

    fn draw_frame(&self, canvas: &mut Canvas, axes: &Axes) {
        let area = axes.area;
        let (left, top) = (area.top_left.x, area.top_left.y);
        let (right, bottom) = (left + area.size.width as i32, top + area.size.height as i32);
        for x in ticks(axes.x) {
            let px = axes.px(x);
            draw_line(canvas, (px, top), (px, bottom), GRID, 1);
            draw_line(canvas, (px, bottom), (px, bottom + 4), BLACK, 1);
            let label = tick_label(x, axes.x);
            text(
                canvas,
                &label,
                Point::new(px, bottom + 7),
                &FONT_6X10,
                Alignment::Center,
                Baseline::Top,
            );
        }
        for y in ticks(axes.y) {
            let py = axes.py(y);
            draw_line(canvas, (left, py), (right, py), GRID, 1);
            draw_line(canvas, (left - 4, py), (left, py), BLACK, 1);
            let label = tick_label(y, axes.y);
            text(
                canvas,
                &label,
                Point::new(left - 7, py),
                &FONT_6X10,
                Alignment::Right,
                Baseline::Middle,
            );
        }
        let frame = PrimitiveStyle::with_stroke(to_rgb(BLACK), 1);
        let _ = Rectangle::new(area.top_left, area.size + Size::new(1, 1))
            .into_styled(frame)
            .draw(canvas);
        let center_x = left + area.size.width as i32 / 2;
        text(
            canvas,
            &self.title,
            Point::new(self.width as i32 / 2, 8),
            &FONT_7X13_BOLD,
            Alignment::Center,
            Baseline::Top,
        );
        text(
            canvas,
            &self.x_label,
            Point::new(center_x, bottom + 24),
            &FONT_7X13,
            Alignment::Center,
            Baseline::Top,
        );
        // The y label, rotated a quarter turn counter-clockwise.
        let mut rotated = Rotated {
            canvas,
            anchor: Point::new(14, top + area.size.height as i32 / 2),
        };
        let anchor = rotated.anchor;
        let style = MonoTextStyle::new(&FONT_7X13, to_rgb(BLACK));
        let layout = TextStyleBuilder::new()
            .alignment(Alignment::Center)
            .baseline(Baseline::Middle)
            .build();
        let _ = Text::with_text_style(&self.y_label, anchor, style, layout).draw(&mut rotated);
    }

    fn draw_legend(&self, canvas: &mut Canvas, axes: &Axes) {
        let entries: Vec<(usize, &Series)> = self
            .series
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.name.is_empty())
            .collect();
        if self.legend == Legend::None || entries.is_empty() {
            return;
        }
        let (char_w, row_h, swatch) = (6usize, 13usize, 18i32);
        let longest = entries
            .iter()
            .map(|(_, s)| s.name.chars().count())
            .max()
            .unwrap_or(0);
        let w = (longest * char_w) as i32 + swatch + 16;
        let h = (entries.len() * row_h + 8) as i32;
        let area = axes.area;
        let (l, t) = (area.top_left.x + 8, area.top_left.y + 8);
        let (r, b) = (
            area.top_left.x + area.size.width as i32 - 8,
            area.top_left.y + area.size.height as i32 - 8,
        );
        let origin = match self.legend {
            Legend::UpperLeft => Point::new(l, t),
            Legend::UpperRight => Point::new(r - w, t),
            Legend::LowerLeft => Point::new(l, b - h),
            Legend::LowerRight | Legend::None => Point::new(r - w, b - h),
        };
        let style = PrimitiveStyle::with_fill(to_rgb(WHITE));
        let _ = Rectangle::new(origin, Size::new(w as u32, h as u32))
            .into_styled(style)
            .draw(canvas);
        let border = PrimitiveStyle::with_stroke(to_rgb(GRID_DARK), 1);
        let _ = Rectangle::new(origin, Size::new(w as u32, h as u32))
            .into_styled(border)
            .draw(canvas);
        for (row, (index, series)) in entries.iter().enumerate() {
            let color = self.color_of(*index);
            let y = origin.y + 4 + (row * row_h) as i32 + row_h as i32 / 2;
            let x = origin.x + 5;
            canvas.opacity = series.opacity.clamp(0.0, 1.0);
            match series.mark {
                Mark::Line { dashed } => {
                    let width = 2;
                    if dashed {
                        draw_dashed(canvas, (x, y), (x + swatch - 4, y), color, width);
                    } else {
                        draw_line(canvas, (x, y), (x + swatch - 4, y), color, width);
                    }
                }
                Mark::Scatter { .. } => draw_dot(canvas, (x + swatch / 2 - 2, y), 3, color),
                Mark::Bars { .. } => {
                    let style = PrimitiveStyle::with_fill(to_rgb(color));
                    let _ = Rectangle::new(Point::new(x, y - 4), Size::new((swatch - 4) as u32, 9))
                        .into_styled(style)
                        .draw(canvas);
                }
            }
            canvas.opacity = 1.0;
            text(
                canvas,
                &series.name,
                Point::new(x + swatch, y),
                &FONT_6X10,
                Alignment::Left,
                Baseline::Middle,
            );
        }
    }
}

const MARGIN_LEFT: i32 = 64;
const MARGIN_RIGHT: i32 = 16;
const MARGIN_TOP: i32 = 30;
const MARGIN_BOTTOM: i32 = 46;
const BLACK: Color = [0, 0, 0];
const WHITE: Color = [255, 255, 255];
const GRID: Color = [230, 230, 230];
const GRID_DARK: Color = [170, 170, 170];

/// The range to plot: the given one, or the data's padded by 5 % (a unit range around a single
/// value, [0, 1] without data).
fn resolve_range(
    axis: &'static str,
    given: Option<(f64, f64)>,
    data: Option<(f64, f64)>,
) -> Result<(f64, f64), PlotError> {
    let (min, max) = match (given, data) {
        (Some(r), _) => r,
        (None, None) => (0.0, 1.0),
        (None, Some((lo, hi))) if lo == hi => (lo - 0.5, hi + 0.5),
        (None, Some((lo, hi))) => {
            let pad = 0.05 * (hi - lo);
            (lo - pad, hi + pad)
        }
    };
    if !(min.is_finite() && max.is_finite() && min < max) {
        return Err(PlotError::InvalidRange { axis, min, max });
    }
    Ok((min, max))
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) giving about 5 to 10 ticks.
fn tick_step((min, max): (f64, f64)) -> f64 {
    let raw = (max - min) / 6.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let fraction = raw / magnitude;
    let nice = if fraction < 1.5 {
        1.0
    } else if fraction < 3.5 {
        2.0
    } else if fraction < 7.5 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// Tick positions: multiples of [`tick_step`] inside the range.
fn ticks(range: (f64, f64)) -> Vec<f64> {
    let step = tick_step(range);
    let first = (range.0 / step - 1e-9).ceil() as i64;
    let last = (range.1 / step + 1e-9).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label with as many decimals as the step needs.
fn tick_label(value: f64, range: (f64, f64)) -> String {
    let step = tick_step(range);
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    let v = if value.abs() < step * 1e-6 {
        0.0
    } else {
        value
    };
    format!("{v:.decimals$}")
}

/// The mapping from data to pixel coordinates.
struct Axes {
    area: Rectangle,
    x: (f64, f64),
    y: (f64, f64),
}

impl Axes {
    fn px(&self, x: f64) -> i32 {
        let t = (x - self.x.0) / (self.x.1 - self.x.0);
        self.area.top_left.x + (t * self.area.size.width as f64).round() as i32
    }

    fn py(&self, y: f64) -> i32 {
        let t = (y - self.y.0) / (self.y.1 - self.y.0);
        self.area.top_left.y + self.area.size.height as i32
            - (t * self.area.size.height as f64).round() as i32
    }

    /// Pixel coordinates, clamped far outside the canvas so that huge values stay drawable.
    fn point(&self, (x, y): (f64, f64)) -> (i32, i32) {
        let clamp = |v: i32| v.clamp(-10_000, 10_000);
        (clamp(self.px(x)), clamp(self.py(y)))
    }
}

fn draw_series(canvas: &mut Canvas, axes: &Axes, series: &Series, color: Color) {
    let finite: Vec<(usize, (f64, f64))> = series
        .points
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, p)| p.0.is_finite() && p.1.is_finite())
        .collect();
    match series.mark {
        Mark::Line { dashed } => {
            for pair in finite.windows(2) {
                let (a, b) = (axes.point(pair[0].1), axes.point(pair[1].1));
                if dashed {
                    draw_dashed(canvas, a, b, color, 2);
                } else {
                    draw_line(canvas, a, b, color, 2);
                }
            }
        }
        Mark::Scatter { radius } => {
            for (_, p) in &finite {
                draw_dot(canvas, axes.point(*p), radius, color);
            }
        }
        Mark::Bars { width } => {
            for (i, (x, y)) in &finite {
                let bottom = series.bottoms.get(*i).copied().unwrap_or(0.0);
                let (x0, y0) = axes.point((x - width / 2.0, y.max(bottom)));
                let (x1, y1) = axes.point((x + width / 2.0, y.min(bottom)));
                let size = Size::new((x1 - x0).max(1) as u32, (y1 - y0).max(1) as u32);
                let style = PrimitiveStyle::with_fill(to_rgb(color));
                let _ = Rectangle::new(Point::new(x0, y0), size)
                    .into_styled(style)
                    .draw(canvas);
                let edge = PrimitiveStyle::with_stroke(to_rgb(darker(color)), 1);
                let _ = Rectangle::new(Point::new(x0, y0), size + Size::new(1, 1))
                    .into_styled(edge)
                    .draw(canvas);
            }
        }
    }
}

fn to_rgb(c: Color) -> Rgb888 {
    Rgb888::new(c[0], c[1], c[2])
}

fn darker(c: Color) -> Color {
    c.map(|v| (u16::from(v) * 3 / 4) as u8)
}

fn draw_line(canvas: &mut Canvas, a: (i32, i32), b: (i32, i32), color: Color, width: u32) {
    let style = PrimitiveStyle::with_stroke(to_rgb(color), width);
    let _ = Line::new(Point::new(a.0, a.1), Point::new(b.0, b.1))
        .into_styled(style)
        .draw(canvas);
}

/// A dashed segment: 6 pixels on, 4 off.
fn draw_dashed(canvas: &mut Canvas, a: (i32, i32), b: (i32, i32), color: Color, width: u32) {
    let (dx, dy) = (f64::from(b.0 - a.0), f64::from(b.1 - a.1));
    let length = (dx * dx + dy * dy).sqrt();
    let mut t = 0.0;
    while t < length {
        let end = (t + 6.0).min(length);
        let at = |s: f64| {
            let f = if length > 0.0 { s / length } else { 0.0 };
            (a.0 + (f * dx).round() as i32, a.1 + (f * dy).round() as i32)
        };
        draw_line(canvas, at(t), at(end), color, width);
        t += 10.0;
    }
}

fn draw_dot(canvas: &mut Canvas, center: (i32, i32), radius: u32, color: Color) {
    let d = 2 * radius + 1;
    let style = PrimitiveStyle::with_fill(to_rgb(color));
    let _ = Circle::new(
        Point::new(center.0 - radius as i32, center.1 - radius as i32),
        d,
    )
    .into_styled(style)
    .draw(canvas);
}

fn text<D: DrawTarget<Color = Rgb888>>(
    target: &mut D,
    s: &str,
    at: Point,
    font: &MonoFont<'_>,
    alignment: Alignment,
    baseline: Baseline,
) {
    let style = MonoTextStyle::new(font, to_rgb(BLACK));
    let layout = TextStyleBuilder::new()
        .alignment(alignment)
        .baseline(baseline)
        .build();
    let _ = Text::with_text_style(s, at, style, layout).draw(target);
}

/// An RGB pixel buffer with an optional clip rectangle and an opacity for blending.
struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    clip: Option<Rectangle>,
    opacity: f64,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: vec![255; (width * height * 3) as usize],
            clip: None,
            opacity: 1.0,
        }
    }

    fn set(&mut self, p: Point, c: Rgb888) {
        if p.x < 0 || p.y < 0 || p.x >= self.width as i32 || p.y >= self.height as i32 {
            return;
        }
        if let Some(clip) = self.clip {
            if !clip.contains(p) {
                return;
            }
        }
        let i = ((p.y as u32 * self.width + p.x as u32) * 3) as usize;
        let a = self.opacity;
        for (k, v) in [c.r(), c.g(), c.b()].into_iter().enumerate() {
            let old = f64::from(self.pixels[i + k]);
            self.pixels[i + k] = (a * f64::from(v) + (1.0 - a) * old).round() as u8;
        }
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        Size::new(self.width, self.height)
    }
}

impl DrawTarget for Canvas {
    type Color = Rgb888;
    type Error = Infallible;
    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Infallible>
    where
        I: IntoIterator<Item = Pixel<Rgb888>>,
    {
        for Pixel(p, c) in pixels {
            self.set(p, c);
        }
        Ok(())
    }
}

/// Draws onto a canvas rotated a quarter turn counter-clockwise around `anchor` (for the
/// vertical y-axis label).
struct Rotated<'a> {
    canvas: &'a mut Canvas,
    anchor: Point,
}

impl OriginDimensions for Rotated<'_> {
    fn size(&self) -> Size {
        Size::new(
            self.canvas.height.max(self.canvas.width),
            self.canvas.width.max(self.canvas.height),
        )
    }
}

impl DrawTarget for Rotated<'_> {
    type Color = Rgb888;
    type Error = Infallible;
    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Infallible>
    where
        I: IntoIterator<Item = Pixel<Rgb888>>,
    {
        let a = self.anchor;
        for Pixel(p, c) in pixels {
            // (dx, dy) -> (dy, -dx): text running left to right now runs bottom to top.
            let q = Point::new(a.x + (p.y - a.y), a.y - (p.x - a.x));
            self.canvas.set(q, c);
        }
        Ok(())
    }
}

/// RGB pixels (row-major, 3 bytes a pixel) encoded as an 8-bit PNG.
fn encode_rgb(width: u32, height: u32, pixels: &[u8]) -> Result<Vec<u8>, PlotError> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header()?;
        writer.write_image_data(pixels)?;
        writer.finish()?;
    }
    Ok(bytes)
}

/// Write `bytes` to `path` through a temporary file in the same directory and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PlotError> {
    use std::io::Write;
    let io = |source| PlotError::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_inside_the_range() {
        assert_eq!(
            ticks((0.0, 1.0)),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(tick_label(0.6000000000000001, (0.0, 1.0)), "0.6");
        let t = ticks((-3.2, 47.0));
        assert_eq!(t.first(), Some(&0.0));
        assert_eq!(t.last(), Some(&40.0));
        assert_eq!(tick_label(-0.0, (-1.0, 1.0)), "0.0");
    }

    #[test]
    fn bad_figures_are_refused() {
        assert!(matches!(
            Figure::new("t").size(10, 10).render(),
            Err(PlotError::TooSmall { .. })
        ));
        assert!(matches!(
            Figure::new("t").x_range(1.0, 1.0).render(),
            Err(PlotError::InvalidRange { axis: "x", .. })
        ));
    }

    #[test]
    fn series_are_drawn_in_their_colors_and_clipped_to_the_axes() {
        let fig = Figure::new("")
            .size(200, 160)
            .x_range(0.0, 1.0)
            .y_range(0.0, 1.0)
            .legend(Legend::None)
            .bars("b", vec![(0.5, 0.5)], 0.5)
            .line("l", vec![(-10.0, 2.0), (10.0, 2.0)]);
        let px = fig.render().unwrap();
        let at = |x: usize, y: usize| {
            [
                px[(y * 200 + x) * 3],
                px[(y * 200 + x) * 3 + 1],
                px[(y * 200 + x) * 3 + 2],
            ]
        };
        // inside the bar: the first palette color
        let axes_w = 200 - (MARGIN_LEFT + MARGIN_RIGHT) as usize;
        let axes_h = 160 - (MARGIN_TOP + MARGIN_BOTTOM) as usize;
        let center = (
            MARGIN_LEFT as usize + axes_w / 2,
            MARGIN_TOP as usize + axes_h * 3 / 4,
        );
        assert_eq!(at(center.0, center.1), PALETTE[0]);
        // the line at y = 2 lies above the axes: nothing of it is drawn in the margin
        assert!(px.chunks(3).all(|p| p != PALETTE[1]));
    }
}
