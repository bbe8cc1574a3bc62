//! SVG charts of benchmark sweeps.
//!
//! A sweep runs one benchmark at several settings of one parameter (connections, group size, ...)
//! and measures several quantities at each. A table of those numbers hides their shape; this module
//! draws them as a grid of line charts, one [`Panel`] per quantity, so a run can be read at a glance
//! and its chart kept beside its numbers.
//!
//! The output is SVG, drawn with `plotters` without its font support: the SVG backend writes
//! `<text>` elements and whatever displays the file lays them out, so rendering needs no font files
//! and no system library. Text sizes are estimated for layout, hence the generous label areas.
//!
//! Drawing never fails on odd data: non-finite or absurdly large values are skipped (and so are
//! non-positive ones on a log axis), and empty, single-point or constant series get a padded range
//! instead of a zero-width one.

use std::ops::Range;
use std::path::Path;

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width of the whole figure, in pixels.
const WIDTH: u32 = 1000;
/// Height of one row of panels, in pixels.
const PANEL_HEIGHT: u32 = 360;
/// Height of the band holding the figure's title, in pixels.
const TITLE_HEIGHT: u32 = 50;
/// Panels per row.
const COLUMNS: usize = 2;
/// Generic family: the viewer picks the face.
const FONT: &str = "sans-serif";
/// Font size of legend entries (plotters' units; the SVG gets `size / 1.24`).
const LEGEND_FONT_SIZE: u32 = 14;
/// Margin inside the legend box, in pixels.
const LEGEND_MARGIN: u32 = 6;
/// Room for a legend entry's line-and-marker sample, in pixels.
const LEGEND_SAMPLE: u32 = 26;

/// Series colours (Tableau 10): distinct, and readable on white. They repeat past ten series.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One line on a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend entry.
    pub name: String,
    /// `(x, y)` points in sweep order; points with a non-finite coordinate, or one beyond ±`1e150`,
    /// are skipped when drawing.
    pub points: Vec<(f64, f64)>,
}

/// One chart panel: a y axis quantity against the sweep's x values.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Caption over the panel.
    pub title: String,
    /// Description of the y axis (quantity and unit).
    pub y_label: String,
    /// Lines drawn on the panel, each in its own colour.
    pub series: Vec<Series>,
    /// Logarithmic y axis; points with `y <= 0` (or tinier than `1e-150`) are then skipped.
    pub log_y: bool,
}

/// Render `panels` as a grid (2 columns; rows as needed, each ~360px tall, 1000px wide total) into
/// an SVG file at `path`, with `title` over the whole figure and `x_label` on every panel's x axis.
///
/// The x axis of a panel spans its points' x values, padded a little; the y axis runs from 0 (from
/// the decade below the smallest positive value when [`Panel::log_y`]) to 1.1 times the largest
/// value. Axis numbers are compact (`19k`, `400k`, `0.5`).
///
/// # Errors
///
/// If the file cannot be written (the error names `path`), or plotters fails to draw.
pub fn write_svg(path: &Path, title: &str, x_label: &str, panels: &[Panel]) -> anyhow::Result<()> {
    let svg = render(title, x_label, panels).context("drawing chart")?;
    std::fs::write(path, svg).with_context(|| format!("cannot write chart to {}", path.display()))
}

/// The SVG document of [`write_svg`], in memory.
fn render(title: &str, x_label: &str, panels: &[Panel]) -> anyhow::Result<String> {
    let rows = panels.len().div_ceil(COLUMNS).max(1);
    let height = TITLE_HEIGHT + u32::try_from(rows)?.saturating_mul(PANEL_HEIGHT);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (head, body) = root.split_vertically(TITLE_HEIGHT);
        let centred =
            |size: u32| TextStyle::from((FONT, size).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        let (head_w, head_h) = head.dim_in_pixel();
        head.draw(&Text::new(
            title,
            (head_w as i32 / 2, head_h as i32 / 2),
            centred(28),
        ))?;
        if panels.is_empty() {
            let (w, h) = body.dim_in_pixel();
            body.draw(&Text::new("no panels", (w as i32 / 2, h as i32 / 2), centred(18)))?;
        }
        for (panel, area) in panels.iter().zip(body.split_evenly((rows, COLUMNS))) {
            draw_panel(&area, panel, x_label)?;
        }
        root.present()?;
    }
    Ok(svg)
}

/// Draws one panel into `area`, choosing the y axis kind.
fn draw_panel(area: &DrawingArea<SVGBackend<'_>, Shift>, panel: &Panel, x_label: &str) -> anyhow::Result<()> {
    let lines: Vec<Vec<(f64, f64)>> = panel
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|&(x, y)| drawable(x) && drawable(y) && (!panel.log_y || y >= 1.0 / LIMIT))
                .collect()
        })
        .collect();
    let ys = || lines.iter().flatten().map(|&(_, y)| y);
    let x = x_range(lines.iter().flatten().map(|&(x, _)| x));
    if panel.log_y {
        draw_axes_and_lines(area, panel, x_label, &lines, x, log_y_range(ys()).log_scale())
    } else {
        draw_axes_and_lines(area, panel, x_label, &lines, x, linear_y_range(ys()))
    }
}

/// Draws the axes, the `lines` (the drawable points of each of `panel.series`), and the legend.
fn draw_axes_and_lines<Y>(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    panel: &Panel,
    x_label: &str,
    lines: &[Vec<(f64, f64)>],
    x: Range<f64>,
    y: Y,
) -> anyhow::Result<()>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, 20))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(&panel.y_label)
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&|v| compact(*v))
        .y_label_formatter(&|v| compact(*v))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;

    for (i, (series, points)) in panel.series.iter().zip(lines).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))?
            .label(&series.name)
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(
                        vec![(0, 0), (LEGEND_SAMPLE as i32 - 6, 0)],
                        colour.stroke_width(2),
                    )
                    + Circle::new((LEGEND_SAMPLE as i32 / 2 - 3, 0), 3, colour.filled())
            });
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    }

    if lines.iter().all(Vec::is_empty) {
        let (xs, ys) = chart.plotting_area().get_pixel_range();
        let (w, h) = (xs.end - xs.start, ys.end - ys.start);
        let style = TextStyle::from((FONT, 16).into_font())
            .color(&RGBColor(128, 128, 128))
            .pos(Pos::new(HPos::Center, VPos::Center));
        chart
            .plotting_area()
            .strip_coord_spec()
            .draw(&Text::new("no data", (w / 2, h / 2), style))?;
    }

    if !panel.series.is_empty() {
        let position = legend_position(&chart, panel, lines);
        chart
            .configure_series_labels()
            .position(position)
            .margin(LEGEND_MARGIN)
            .legend_area_size(LEGEND_SAMPLE)
            .label_font((FONT, LEGEND_FONT_SIZE))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    Ok(())
}

/// The plot corner whose legend box would cover the fewest points and line samples (upper left on
/// a tie).
fn legend_position<Y: Ranged<ValueType = f64>>(
    chart: &ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, Y>>,
    panel: &Panel,
    lines: &[Vec<(f64, f64)>],
) -> SeriesLabelPosition {
    // Legend size as plotters estimates text (about 0.46 of the font size per character).
    let longest = panel
        .series
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0) as i32;
    let char_w = f64::from(LEGEND_FONT_SIZE) * 0.46;
    let w = (char_w * f64::from(longest)) as i32 + (LEGEND_SAMPLE + 2 * LEGEND_MARGIN) as i32;
    let h = panel.series.len() as i32 * (LEGEND_FONT_SIZE as i32 + 2) + 2 * LEGEND_MARGIN as i32;
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    // Where plotters places the box for each candidate corner (5px from the edges).
    let left = xs.start + 5;
    let right = xs.end - w - 5;
    let top = ys.start + 5;
    let bottom = ys.end - h - 5;
    let candidates = [
        (SeriesLabelPosition::UpperLeft, left, top),
        (SeriesLabelPosition::UpperRight, right, top),
        (SeriesLabelPosition::LowerRight, right, bottom),
        (SeriesLabelPosition::LowerLeft, left, bottom),
    ];

    let mut samples = Vec::new();
    for line in lines {
        let pixels: Vec<(i32, i32)> = line.iter().map(|p| chart.backend_coord(p)).collect();
        samples.extend(pixels.iter().copied());
        for pair in pixels.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            for step in 1..16 {
                let t = f64::from(step) / 16.0;
                let lerp = |a: i32, b: i32| a + (f64::from(b - a) * t) as i32;
                samples.push((lerp(x0, x1), lerp(y0, y1)));
            }
        }
    }
    let covered = |x0: i32, y0: i32| {
        samples
            .iter()
            .filter(|&&(x, y)| (x0 - 4..=x0 + w + 4).contains(&x) && (y0 - 4..=y0 + h + 4).contains(&y))
            .count()
    };
    candidates
        .into_iter()
        .min_by_key(|&(_, x, y)| covered(x, y))
        .map_or(SeriesLabelPosition::UpperLeft, |(position, _, _)| position)
}

/// Largest magnitude drawn, and on a log axis the inverse of the smallest: plotters loops forever
/// when an axis's span, or on a log axis the ratio of its ends, overflows.
const LIMIT: f64 = 1e150;

/// Whether a coordinate can be placed on an axis: finite and within ±[`LIMIT`].
fn drawable(v: f64) -> bool {
    v.is_finite() && v.abs() <= LIMIT
}

/// Span of the `xs`, padded 3% each side; a point or equal values get a span around them.
fn x_range(xs: impl Iterator<Item = f64>) -> Range<f64> {
    let (min, max) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    if min > max {
        return 0.0..1.0;
    }
    let span = max - min;
    let pad = if span > 0.0 {
        span * 0.03
    } else {
        (min.abs() * 0.1).max(1.0)
    };
    (min - pad)..(max + pad)
}

/// From 0 (or the lowest value, when negative) to 1.1 times the highest; `0..1` for no or all-zero
/// values.
fn linear_y_range(ys: impl Iterator<Item = f64>) -> Range<f64> {
    let (min, max) = ys.fold((0.0_f64, 0.0_f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = (min * 1.1, max * 1.1);
    if hi > lo { lo..hi } else { 0.0..1.0 }
}

/// From the power of ten at or below the smallest positive value to 1.1 times the highest, so the
/// axis always has a labelled decade; `1..10` when nothing is positive.
fn log_y_range(ys: impl Iterator<Item = f64>) -> Range<f64> {
    let (min, max) = ys
        .filter(|&y| y > 0.0)
        .fold((f64::INFINITY, 0.0_f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    if !min.is_finite() {
        return 1.0..10.0;
    }
    // A hair under the decade: plotters' log ticks start at the first power of ten it computes to be
    // inside the range, and `ln` rounding can put the decade itself just outside.
    let lo = 10f64.powi(min.log10().floor() as i32) * (1.0 - 1e-9);
    let hi = (max * 1.1).max(lo * 10.0_f64.sqrt());
    if lo > 0.0 && hi.is_finite() && hi > lo {
        lo..hi
    } else {
        1.0..10.0
    }
}

/// A number in at most three significant digits with an SI suffix: `19k`, `400k`, `1.5M`, `0.5`.
fn compact(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v == 0.0 {
            "0".into()
        } else {
            format!("{v}")
        };
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let a = round_significant(v.abs(), 3);
    if a < 1e-3 {
        return format!("{sign}{}", trim_exponent(&format!("{a:.2e}")));
    }
    const SUFFIXES: [(f64, &str); 5] = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")];
    let (scaled, suffix) = SUFFIXES
        .iter()
        .find(|&&(scale, _)| a >= scale)
        .map_or((a, ""), |&(scale, suffix)| (a / scale, suffix));
    let decimals = (2 - scaled.log10().floor() as i32).max(0) as usize;
    let digits = format!("{scaled:.decimals$}");
    let digits = if digits.contains('.') {
        digits.trim_end_matches('0').trim_end_matches('.')
    } else {
        &digits
    };
    format!("{sign}{digits}{suffix}")
}

/// `a` (positive, finite) rounded to `digits` significant digits.
fn round_significant(a: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits - 1 - a.log10().floor() as i32);
    let rounded = (a * scale).round() / scale;
    if rounded.is_finite() { rounded } else { a }
}

/// `1.50e-4` → `1.5e-4`.
fn trim_exponent(s: &str) -> String {
    match s.split_once('e') {
        Some((mantissa, exp)) if mantissa.contains('.') => {
            format!("{}e{exp}", mantissa.trim_end_matches('0').trim_end_matches('.'))
        }
        _ => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, points: &[(f64, f64)]) -> Series {
        Series {
            name: name.into(),
            points: points.to_vec(),
        }
    }

    fn panel(title: &str, log_y: bool, series: Vec<Series>) -> Panel {
        Panel {
            title: title.into(),
            y_label: "msgs/s".into(),
            series,
            log_y,
        }
    }

    /// Renders to a temporary file and returns the SVG text.
    fn render_to_file(title: &str, panels: &[Panel]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.svg");
        write_svg(&path, title, "connections", panels).unwrap();
        assert!(path.exists());
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.contains(title));
        svg
    }

    #[test]
    fn renders_title_and_series_names() {
        let panels = [
            panel(
                "Throughput",
                false,
                vec![
                    series(
                        "memory broker",
                        &[(100.0, 19_000.0), (1_000.0, 150_000.0), (10_000.0, 400_000.0)],
                    ),
                    series(
                        "redis broker",
                        &[(100.0, 12_000.0), (1_000.0, 90_000.0), (10_000.0, 210_000.0)],
                    ),
                ],
            ),
            panel(
                "p99 latency",
                true,
                vec![series("p99", &[(100.0, 0.5), (1_000.0, 3.0), (10_000.0, 80.0)])],
            ),
            panel(
                "Dropped",
                false,
                vec![series("dropped frames", &[(100.0, 0.0), (10_000.0, 7.0)])],
            ),
        ];
        let svg = render_to_file("Fan-out sweep", &panels);
        for name in [
            "memory broker",
            "redis broker",
            "p99",
            "dropped frames",
            "Throughput",
            "connections",
            "msgs/s",
        ] {
            assert!(svg.contains(name), "missing {name}");
        }
        // Three panels take two rows.
        assert!(svg.contains(&format!("height=\"{}\"", TITLE_HEIGHT + 2 * PANEL_HEIGHT)));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        let panels = [
            panel("one point", false, vec![series("single", &[(5.0, 3.0)])]),
            panel("empty series", false, vec![series("nothing", &[])]),
            panel("no series", false, vec![]),
            panel(
                "non-finite",
                false,
                vec![series("nan", &[(1.0, nan), (nan, 2.0), (inf, 1.0), (3.0, 4.0)])],
            ),
            panel(
                "only non-finite",
                true,
                vec![series("all nan", &[(nan, nan), (1.0, -inf)])],
            ),
            panel(
                "all zeros",
                false,
                vec![series("zeros", &[(0.0, 0.0), (0.0, 0.0)])],
            ),
            panel(
                "log zeros",
                true,
                vec![series("log zeros", &[(1.0, 0.0), (2.0, 0.0)])],
            ),
            panel(
                "log mixed",
                true,
                vec![series("log mixed", &[(1.0, 0.0), (2.0, 5.0), (3.0, -1.0)])],
            ),
            panel(
                "equal x",
                false,
                vec![series("equal x", &[(7.0, 1.0), (7.0, 2.0)])],
            ),
            panel(
                "negative",
                false,
                vec![series("negative", &[(-3.0, -2.0), (-1.0, -8.0)])],
            ),
            panel(
                "huge",
                true,
                vec![series("huge", &[(1.0, f64::MAX), (2.0, f64::MIN_POSITIVE)])],
            ),
            panel(
                "huge linear",
                false,
                vec![series("huge linear", &[(f64::MIN, f64::MAX), (f64::MAX, 1.0)])],
            ),
            panel(
                "big",
                false,
                vec![series(
                    "big",
                    &[
                        (-f64::MAX / 4.0, f64::MAX / 4.0),
                        (f64::MAX / 4.0, -f64::MAX / 4.0),
                    ],
                )],
            ),
            panel(
                "big log",
                true,
                vec![series(
                    "big log",
                    &[(0.0, f64::MAX / 4.0), (1.0, f64::MIN_POSITIVE)],
                )],
            ),
        ];
        let svg = render_to_file("Degenerate", &panels);
        for s in panels.iter().flat_map(|p| &p.series) {
            assert!(svg.contains(&s.name), "missing {}", s.name);
        }
        render_to_file("No panels", &[]);
    }

    #[test]
    fn escapes_markup_in_text() {
        let svg = render_to_file(
            "Escaping",
            &[panel("<p>", false, vec![series("x<y & z", &[(1.0, 1.0)])])],
        );
        assert!(
            svg.contains("&lt;p&gt;") && svg.contains("x&lt;y &amp; z"),
            "{svg}"
        );
    }

    #[test]
    fn unwritable_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("chart.svg");
        let err = write_svg(&path, "t", "x", &[]).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("cannot write chart to") && msg.contains("missing-dir"),
            "{msg}"
        );
    }

    #[test]
    fn ranges_are_never_empty() {
        assert_eq!(x_range([].into_iter()), 0.0..1.0);
        assert_eq!(x_range([4.0].into_iter()), 3.0..5.0);
        assert_eq!(x_range([1000.0, 1000.0].into_iter()), 900.0..1100.0);
        let r = x_range([0.0, 100.0].into_iter());
        assert!(r.start < 0.0 && r.end > 100.0);
        assert_eq!(linear_y_range([0.0, 0.0].into_iter()), 0.0..1.0);
        assert_eq!(linear_y_range([].into_iter()), 0.0..1.0);
        let r = linear_y_range([10.0, 5.0].into_iter());
        assert_eq!(r.start, 0.0);
        assert!((r.end - 11.0).abs() < 1e-9);
        assert_eq!(log_y_range([0.0].into_iter()), 1.0..10.0);
        let r = log_y_range([0.0, 250.0, 800.0].into_iter());
        assert!((r.start - 100.0).abs() < 1e-6, "{r:?}");
        assert!((r.end - 880.0).abs() < 1e-9);
    }

    #[test]
    fn compact_numbers() {
        let cases = [
            (19_000.0, "19k"),
            (400_000.0, "400k"),
            (0.5, "0.5"),
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (250.0, "250"),
            (1_250.0, "1.25k"),
            (12_345.0, "12.3k"),
            (999_999.0, "1M"),
            (1_500_000.0, "1.5M"),
            (2.5e9, "2.5G"),
            (-19_000.0, "-19k"),
            (0.125, "0.125"),
            (0.005, "0.005"),
            (0.000_15, "1.5e-4"),
            (0.1 + 0.2, "0.3"),
        ];
        for (v, want) in cases {
            assert_eq!(compact(v), want, "compact({v})");
        }
    }
}
