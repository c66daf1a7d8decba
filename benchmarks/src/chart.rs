//! The SVG bar chart of the ratios (plotters): braid/tokio on a linear axis on the left,
//! braid/asyncio and braid/uvloop on a logarithmic one on the right, one row per workload in
//! the table's order, so that the rows of both panels line up.

use crate::machine::Machine;
use crate::report::{fmt_speedup, Row};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 1100;
const ROW_HEIGHT: u32 = 34;
const TITLE_HEIGHT: u32 = 56;
/// Everything of a panel that is not rows: caption, x axis labels, margins.
const PANEL_FRAME: u32 = 100;
const LEFT_PANEL_WIDTH: u32 = 640;
const FASTER: RGBColor = RGBColor(46, 139, 87);
const SLOWER: RGBColor = RGBColor(200, 50, 50);
const ASYNCIO: RGBColor = RGBColor(52, 101, 164);
const UVLOOP: RGBColor = RGBColor(230, 140, 30);

/// Writes the chart of `rows` to `path`.
pub(crate) fn draw(
    path: &Path,
    rows: &[Row],
    machine: &Machine,
    quick: bool,
) -> Result<(), String> {
    draw_inner(path, rows, machine, quick).map_err(|e| e.to_string())
}

fn draw_inner(
    path: &Path,
    rows: &[Row],
    machine: &Machine,
    quick: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let rows: Vec<&Row> = rows
        .iter()
        .filter(|r| {
            r.braid_over_tokio().is_some()
                || r.braid_over_asyncio().is_some()
                || r.braid_over_uvloop().is_some()
        })
        .collect();
    let n = rows.len().max(1);
    let height = TITLE_HEIGHT + PANEL_FRAME + ROW_HEIGHT * n as u32;
    let root = SVGBackend::new(path, (WIDTH, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(TITLE_HEIGHT);
    let quick_note = if quick { "  [QUICK RUN]" } else { "" };
    title.draw_text(
        &format!("braid's median time as a fraction of the other runtime's{quick_note}"),
        &("sans-serif", 20).into_font().color(&BLACK),
        (12, 8),
    )?;
    title.draw_text(
        &format!(
            "{}; {} logical cores, {} workers each; {}; below 1: braid is faster",
            machine.cpu_model, machine.cores, machine.workers, machine.date
        ),
        &("sans-serif", 13).into_font().color(&RGBColor(80, 80, 80)),
        (12, 34),
    )?;
    if rows.is_empty() {
        body.draw_text(
            "no results",
            &("sans-serif", 16).into_font().color(&BLACK),
            (12, 12),
        )?;
        root.present()?;
        return Ok(());
    }
    let (left, right) = body.split_horizontally(LEFT_PANEL_WIDTH);
    tokio_panel(&left, &rows)?;
    python_panel(&right, &rows)?;
    root.present()?;
    Ok(())
}

/// The segment of row `i` when `n` rows stack top to bottom (plotters' y grows upwards).
fn segment(n: usize, i: usize) -> usize {
    n - 1 - i
}

fn tokio_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    rows: &[&Row],
) -> Result<(), Box<dyn std::error::Error>> {
    let n = rows.len();
    let max = rows
        .iter()
        .filter_map(|r| r.braid_over_tokio())
        .fold(1.0_f64, f64::max);
    let x_max = (max * 1.25).max(1.5);
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption("braid / tokio (linear)", ("sans-serif", 16))
        .x_label_area_size(36)
        .y_label_area_size(230)
        // An integer range's end is one of its values: 0..n - 1 makes n segments.
        .build_cartesian_2d(0.0..x_max, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(s) if *s < n => names[n - 1 - *s].clone(),
            _ => String::new(),
        })
        .x_desc("time ratio")
        .label_style(("sans-serif", 12))
        .draw()?;
    chart.draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
        let x = r.braid_over_tokio()?;
        let s = segment(n, i);
        let colour = if x > 1.0 { SLOWER } else { FASTER };
        let mut bar = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(s)),
                (x, SegmentValue::Exact(s + 1)),
            ],
            colour.filled(),
        );
        bar.set_margin(6, 6, 0, 0);
        Some(bar)
    }))?;
    chart.draw_series(rows.iter().enumerate().filter_map(|(i, r)| {
        let x = r.braid_over_tokio()?;
        Some(Text::new(
            format!(" {x:.2}"),
            (x, SegmentValue::CenterOf(segment(n, i))),
            ("sans-serif", 12).into_font(),
        ))
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Exact(n))],
        BLACK.stroke_width(1),
    )))?;
    Ok(())
}

fn python_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    rows: &[&Row],
) -> Result<(), Box<dyn std::error::Error>> {
    let n = rows.len();
    let values: Vec<f64> = rows
        .iter()
        .flat_map(|r| [r.braid_over_asyncio(), r.braid_over_uvloop()])
        .flatten()
        .filter(|x| *x > 0.0)
        .collect();
    let lo = values.iter().copied().fold(1.0_f64, f64::min);
    let hi = values.iter().copied().fold(1.0_f64, f64::max);
    // Whole decades: one below the smallest ratio, and one above the largest (at least up to
    // 100) to leave the legend room at the right.
    let x_lo = 10f64.powf(lo.log10().floor() - 1.0);
    let x_hi = 10f64.powf(hi.log10().ceil() + 1.0).max(100.0);
    // Two segments per row: asyncio above, uvloop below, aligned with the left panel's rows.
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .caption(
            "braid / CPython asyncio and uvloop (log)",
            ("sans-serif", 16),
        )
        .x_label_area_size(36)
        .y_label_area_size(8)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), (0..2 * n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        // The rows are named on the left panel; plotters loops forever on zero labels, so
        // ask for one per segment and print none.
        .y_labels(2 * n)
        .y_label_formatter(&|_| String::new())
        .x_label_formatter(&|v| {
            if *v < 1.0 {
                format!("1/{:.0}", 1.0 / v)
            } else {
                format!("{v:.0}")
            }
        })
        .x_desc("time ratio")
        .label_style(("sans-serif", 12))
        .draw()?;
    for (column, colour, label) in [(0, ASYNCIO, "asyncio"), (1, UVLOOP, "uvloop")] {
        let ratio = |r: &Row| {
            if column == 0 {
                r.braid_over_asyncio()
            } else {
                r.braid_over_uvloop()
            }
        };
        let bars: Vec<(usize, f64)> = rows
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, ratio(r)?)))
            .collect();
        if bars.is_empty() {
            continue;
        }
        let s = |i: usize| 2 * segment(n, i) + 1 - column;
        chart
            .draw_series(bars.iter().map(|&(i, x)| {
                let mut bar = Rectangle::new(
                    [
                        (x_lo, SegmentValue::Exact(s(i))),
                        (x, SegmentValue::Exact(s(i) + 1)),
                    ],
                    colour.filled(),
                );
                bar.set_margin(1, 1, 0, 0);
                bar
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled()));
        chart.draw_series(bars.iter().map(|&(i, x)| {
            let label = if x < 0.5 {
                format!(" {} faster", fmt_speedup(1.0 / x))
            } else {
                format!(" {x:.2}")
            };
            Text::new(
                label,
                (x, SegmentValue::CenterOf(s(i))),
                ("sans-serif", 11).into_font(),
            )
        }))?;
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![
            (1.0, SegmentValue::Exact(0)),
            (1.0, SegmentValue::Exact(2 * n)),
        ],
        BLACK.stroke_width(1),
    )))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()?;
    Ok(())
}
