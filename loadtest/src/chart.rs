//! Line charts as self-contained SVG (plotters' SVG backend; text is SVG
//! `<text>`, so no font files are needed and the page has no scripts). One
//! function draws every chart of the reports: numeric or labelled x axes,
//! linear or logarithmic y axes, a legend outside the data.

use plotters::coord::Shift;
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Colours of the series, in order (a colour-blind-safe palette).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0x17, 0xbe, 0xcf),
    RGBColor(0x7f, 0x7f, 0x7f),
];

pub const WIDTH: u32 = 760;
pub const HEIGHT: u32 = 340;
/// Room right of the plot for the legend, so it never covers the data.
const LEGEND_WIDTH: u32 = 190;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    /// A reference (drawn thin and dashed), e.g. a ceiling measured elsewhere.
    pub reference: bool,
    /// Series of one group share a colour (a server's p50 and p99).
    pub group: Option<usize>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            name: name.into(),
            points,
            reference: false,
            group: None,
        }
    }

    pub fn reference(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series {
            reference: true,
            ..Series::new(name, points)
        }
    }
}

/// How the x axis reads.
#[derive(Debug, Clone)]
pub enum XAxis {
    /// Plain numbers (seconds).
    Linear,
    /// Log₂-spaced numbers (concurrency 1, 8, 64, 256).
    Log2,
    /// Named positions: (x, label), e.g. the percentiles on a "nines" axis.
    Labelled(Vec<(f64, String)>),
}

/// How the y axis reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YAxis {
    /// From zero.
    Linear,
    /// Logarithmic (latencies spanning orders of magnitude).
    Log,
    /// Logarithmic when the data spans more than 20×, else linear.
    Auto,
}

#[derive(Debug, Clone)]
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub x_axis: XAxis,
    pub y_axis: YAxis,
    pub series: Vec<Series>,
}

/// A value with its unit-free magnitude suffix: 16400 → "16.4k", 0.25 → "0.25".
pub fn short_number(v: f64) -> String {
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let text = if scaled == scaled.trunc() || scaled.abs() >= 100.0 {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else if scaled.abs() >= 1.0 {
        format!("{scaled:.2}")
    } else {
        format!("{scaled:.3}")
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    format!("{text}{suffix}")
}

/// The smallest 1, 2 or 5 × 10ⁿ at or above `v`: an axis top that the tick
/// steps divide, so the highest tick is at or above every value.
pub fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let decade = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|&top| top >= v * (1.0 - 1e-12))
        .unwrap_or(10.0 * decade)
}

/// The largest 1, 2 or 5 × 10ⁿ at or below `v`.
pub fn nice_floor(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1e-9;
    }
    let decade = 10f64.powf(v.log10().floor());
    [5.0, 2.0, 1.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|&bottom| bottom <= v * (1.0 + 1e-12))
        .unwrap_or(decade)
}

fn bounds(series: &[Series]) -> Option<(f64, f64, f64, f64)> {
    let mut points = series
        .iter()
        .flat_map(|s| s.points.iter())
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let &(x, y) = points.next()?;
    let (mut x0, mut x1, mut y0, mut y1) = (x, x, y, y);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    Some((x0, x1, y0, y1))
}

impl Chart<'_> {
    /// The chart as one `<svg>` element.
    pub fn svg(&self) -> String {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
            if let Err(err) = self.draw(&root) {
                let _ = root.fill(&WHITE);
                let _ = root.draw_text(
                    &format!("chart failed: {err}"),
                    &("sans-serif", 14).into_text_style(&root),
                    (20, 20),
                );
            }
            let _ = root.present();
        }
        out
    }

    fn draw(
        &self,
        root: &DrawingArea<SVGBackend<'_>, Shift>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE).map_err(boxed)?;
        let (plot, legend) = root.split_horizontally(WIDTH - LEGEND_WIDTH);
        let (x0, x1, y0, y1) = bounds(&self.series).unwrap_or((0.0, 1.0, 0.0, 1.0));
        let log = match self.y_axis {
            YAxis::Log => true,
            YAxis::Linear => false,
            YAxis::Auto => y0 > 0.0 && y1 / y0 > 20.0,
        };
        // x in plot coordinates: log₂ for concurrency axes.
        let to_x = |x: f64| match self.x_axis {
            XAxis::Log2 => x.max(1e-9).log2(),
            _ => x,
        };
        let (mut lo, mut hi) = (to_x(x0), to_x(x1));
        if let XAxis::Labelled(labels) = &self.x_axis {
            lo = labels.iter().map(|l| l.0).fold(lo, f64::min);
            hi = labels.iter().map(|l| l.0).fold(hi, f64::max);
        }
        if hi <= lo {
            (lo, hi) = (lo - 0.5, lo + 0.5);
        }
        // Named or log₂ positions are labelled where they are, not at ticks.
        let x_keys: Vec<(f64, String)> = match &self.x_axis {
            XAxis::Labelled(labels) => labels.clone(),
            XAxis::Log2 => {
                let mut xs: Vec<f64> = self
                    .series
                    .iter()
                    .flat_map(|s| s.points.iter().map(|p| p.0))
                    .collect();
                xs.sort_by(f64::total_cmp);
                xs.dedup();
                xs.into_iter().map(|x| (to_x(x), short_number(x))).collect()
            }
            XAxis::Linear => Vec::new(),
        };
        let lines: Vec<Line> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, series)| {
                let points = series
                    .points
                    .iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log || *y > 0.0))
                    .map(|&(x, y)| (to_x(x), y))
                    .collect();
                let colour = series.group.unwrap_or(i);
                (PALETTE[colour % PALETTE.len()], series.reference, points)
            })
            .collect();
        let mut builder = ChartBuilder::on(&plot);
        builder
            .caption(self.title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(42)
            .y_label_area_size(64);
        // A little room either side, so points at the ends are not on the axes.
        let pad = (hi - lo) * 0.03;
        let x = (lo - pad)..(hi + pad);
        let axes = Axes {
            x_label: self.x_label,
            y_label: self.y_label,
            x_keys: &x_keys,
            y_keys: Vec::new(),
        };
        if log {
            // From the 1-2-5 value at or below the data to the one at or above,
            // with at least three labelled values between.
            let y_lo = nice_floor(y0.max(1e-9));
            let mut y_hi = nice_ceiling(y1.max(y_lo));
            while log_ticks(y_lo, y_hi).len() < 3 {
                y_hi = nice_ceiling(y_hi * 1.01);
            }
            let chart = builder
                .build_cartesian_2d(x, (y_lo..y_hi).log_scale())
                .map_err(boxed)?;
            let axes = Axes {
                y_keys: log_ticks(y_lo, y_hi),
                ..axes
            };
            axes.plot(chart, &lines, y_lo)?;
        } else {
            let chart = builder
                .build_cartesian_2d(x, 0f64..nice_ceiling(y1 * 1.05))
                .map_err(boxed)?;
            axes.plot(chart, &lines, 0.0)?;
        }
        // The legend, beside the plot.
        let style = ("sans-serif", 12).into_text_style(&legend);
        for (i, (series, (colour, reference, _))) in self.series.iter().zip(&lines).enumerate() {
            let y = 40 + 18 * i as i32;
            let width = if *reference { 1 } else { 2 };
            legend
                .draw(&PathElement::new(
                    vec![(6, y), (30, y)],
                    colour.stroke_width(width),
                ))
                .map_err(boxed)?;
            legend
                .draw_text(&series.name, &style, (36, y - 7))
                .map_err(boxed)?;
        }
        Ok(())
    }
}

fn boxed<E: std::error::Error>(err: E) -> Box<dyn std::error::Error> {
    err.to_string().into()
}

/// A series ready to draw: colour, whether it is a reference, points in plot coordinates.
type Line = (RGBColor, bool, Vec<(f64, f64)>);

/// What every chart's axes share, whatever its y coordinate type.
struct Axes<'a> {
    x_label: &'a str,
    y_label: &'a str,
    /// Labels at given x positions; empty: plotters' own ticks.
    x_keys: &'a [(f64, String)],
    /// Labelled y values (log axes: 1, 2, 5 × 10ⁿ); empty: plotters' own ticks.
    y_keys: Vec<f64>,
}

/// 1, 2 and 5 × 10ⁿ within `lo..=hi` (thinned to 1 × 10ⁿ when they are many).
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.max(1e-12).log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = m * decade;
            if v >= lo && v <= hi {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    if ticks.len() > 10 {
        ticks.retain(|v| (v.log10() - v.log10().round()).abs() < 1e-9);
    }
    ticks
}

impl Axes<'_> {
    fn plot<'b, Y>(
        &self,
        mut chart: ChartContext<'b, SVGBackend<'b>, Cartesian2d<RangedCoordf64, Y>>,
        lines: &[Line],
        y_bottom: f64,
    ) -> Result<(), Box<dyn std::error::Error>>
    where
        Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(self.x_label)
            .y_desc(self.y_label)
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 13))
            .light_line_style(WHITE)
            .x_label_formatter(&|x: &f64| short_number(*x))
            .y_label_formatter(&|y: &f64| short_number(*y));
        // Where we label ourselves, plotters draws no labels (it keeps one
        // key point even when asked for none, so its text is emptied too).
        if !self.x_keys.is_empty() {
            mesh.x_labels(0)
                .disable_x_mesh()
                .x_label_formatter(&|_: &f64| String::new());
        }
        if !self.y_keys.is_empty() {
            mesh.y_labels(0)
                .disable_y_mesh()
                .y_label_formatter(&|_: &f64| String::new());
        }
        mesh.draw().map_err(boxed)?;
        if !self.y_keys.is_empty() {
            let (x_left, x_right) = (chart.x_range().start, chart.x_range().end);
            let grid = RGBColor(0, 0, 0).mix(0.15);
            let label = ("sans-serif", 12)
                .into_font()
                .into_text_style(chart.plotting_area())
                .pos(Pos::new(HPos::Right, VPos::Center));
            for &y in &self.y_keys {
                chart
                    .plotting_area()
                    .draw(&PathElement::new(vec![(x_left, y), (x_right, y)], grid))
                    .map_err(boxed)?;
                let element = EmptyElement::at((x_left, y))
                    + Text::new(short_number(y), (-6, 0), label.clone());
                chart.plotting_area().draw(&element).map_err(boxed)?;
            }
        }
        for (colour, reference, points) in lines {
            if *reference {
                chart
                    .draw_series(DashedLineSeries::new(
                        points.clone(),
                        6,
                        4,
                        colour.stroke_width(1),
                    ))
                    .map_err(boxed)?;
            } else {
                chart
                    .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                    .map_err(boxed)?;
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 2, colour.filled())))
                    .map_err(boxed)?;
            }
        }
        // Key labels just under the axis, centred on their positions.
        let style = ("sans-serif", 12)
            .into_font()
            .into_text_style(chart.plotting_area())
            .pos(Pos::new(HPos::Center, VPos::Top));
        for (x, label) in self.x_keys {
            let element =
                EmptyElement::at((*x, y_bottom)) + Text::new(label.clone(), (0, 8), style.clone());
            chart.plotting_area().draw(&element).map_err(boxed)?;
        }
        Ok(())
    }
}

/// Every `<text>` of an SVG as (x, y, content): what a reader sees, for tests
/// of the charts' axes.
pub fn texts(svg: &str) -> Vec<(f64, f64, String)> {
    let attr = |tag: &str, name: &str| -> Option<f64> {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        tag[start..].split('"').next()?.parse().ok()
    };
    svg.split("<text")
        .skip(1)
        .filter_map(|chunk| {
            let (tag, rest) = chunk.split_once('>')?;
            let content = rest.split("</text>").next()?.trim().to_owned();
            Some((attr(tag, "x")?, attr(tag, "y")?, content))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_numbers_read_well() {
        assert_eq!(short_number(16_400.0), "16.4k");
        assert_eq!(short_number(250.0), "250");
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(2_000_000.0), "2M");
        assert_eq!(short_number(3.0), "3");
    }

    #[test]
    fn nice_ceilings_are_one_two_or_five_times_a_power_of_ten() {
        assert_eq!(nice_ceiling(16_400.0 * 1.05), 20_000.0);
        assert_eq!(nice_ceiling(3.1), 5.0);
        assert_eq!(nice_ceiling(5.0), 5.0);
        assert_eq!(nice_ceiling(0.07), 0.1);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
