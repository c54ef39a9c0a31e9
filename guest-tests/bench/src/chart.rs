//! `bench.svg`: TX throughput on one queue pair by frame size, zcnet against
//! the raw tap limit, in Gbit/s on log scales, with the median marked and
//! the repetitions' min..max as error bars.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use thiserror::Error;

use crate::report::{Spread, Summary};
use crate::workload::{Direction, Workload};

#[derive(Debug, Error)]
#[error("cannot draw the chart")]
pub struct ChartError(#[source] DrawingAreaErrorKind<std::io::Error>);

impl From<DrawingAreaErrorKind<std::io::Error>> for ChartError {
    fn from(e: DrawingAreaErrorKind<std::io::Error>) -> Self {
        ChartError(e)
    }
}

/// Draws one labelled series through the medians of `points` (x, spread),
/// with the repetitions' min..max as vertical error bars.
pub fn median_line<'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    points: &[(f64, Spread)],
    color: RGBColor,
    name: &str,
) -> Result<(), ChartError> {
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|(x, s)| (*x, s.median)),
            color.stroke_width(2),
        ))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(
        points
            .iter()
            .map(|(x, s)| ErrorBar::new_vertical(*x, s.min, s.median, s.max, color.filled(), 8)),
    )?;
    Ok(())
}

/// One point: a frame size and the Gbit/s reached.
struct Point {
    frame_len: f64,
    gbit: Spread,
}

/// The one-queue-pair TX workloads' points for zcnet and the raw tap, the
/// axis label of each frame size, and zcnet/raw at each.
struct Points {
    zcnet: Vec<Point>,
    raw: Vec<Point>,
    labels: Vec<(f64, String)>,
    ratios: Vec<Option<f64>>,
}

fn points(summary: &[Summary]) -> Points {
    let mut p = Points {
        zcnet: Vec::new(),
        raw: Vec::new(),
        labels: Vec::new(),
        ratios: Vec::new(),
    };
    for w in Workload::ALL {
        if w.direction() != Direction::Tx || w.pairs() != 1 {
            continue;
        }
        let Some(s) = summary.iter().find(|s| s.workload == w.id()) else {
            continue;
        };
        let frame_len = w.frame_len() as f64;
        if let Some(z) = &s.zcnet {
            p.zcnet.push(Point {
                frame_len,
                gbit: z.gbit_per_second,
            });
            p.ratios.push(s.zcnet_over_raw);
        }
        if let Some(r) = &s.raw {
            p.raw.push(Point {
                frame_len,
                gbit: r.gbit_per_second,
            });
        }
        let label = w.title().trim_start_matches("TX ");
        p.labels.push((
            frame_len,
            if w.gso() {
                format!("{label} ({} B)", w.frame_len())
            } else {
                label.to_owned()
            },
        ));
    }
    p
}

/// Powers of ten that enclose every value with some room.
fn y_range(points: &[&Point]) -> (f64, f64) {
    let lo = points
        .iter()
        .map(|p| p.gbit.min)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.gbit.max).fold(0.0, f64::max);
    if !lo.is_finite() || hi <= 0.0 {
        return (0.01, 100.0);
    }
    (
        10f64.powf((lo / 2.0).log10().floor()),
        10f64.powf((hi * 2.0).log10().ceil()),
    )
}

pub fn draw(path: &Path, summary: &[Summary], subtitle: &str) -> Result<(), ChartError> {
    let p = points(summary);
    let all: Vec<&Point> = p.zcnet.iter().chain(&p.raw).collect();
    let (y_lo, y_hi) = y_range(&all);
    let sizes: Vec<f64> = p.labels.iter().map(|(x, _)| *x).collect();
    let size_label = |x: &f64| {
        p.labels
            .iter()
            .find(|(at, _)| at == x)
            .map_or_else(|| format!("{x}"), |(_, l)| l.clone())
    };

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, rest) = root.split_vertically(70);
    title.draw(&Text::new(
        "zcnet TX throughput by frame size vs the raw tap limit (1 queue pair)",
        (20, 12),
        ("sans-serif", 22),
    ))?;
    title.draw(&Text::new(subtitle, (20, 44), ("sans-serif", 13)))?;

    // Room on both sides of the frame sizes for the labels.
    let mut chart = ChartBuilder::on(&rest)
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (20f64..400_000f64).log_scale().with_key_points(sizes),
            (y_lo..y_hi).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("frame size on the wire (log scale)")
        .y_desc("Gbit/s (log scale)")
        .x_label_formatter(&size_label)
        .y_label_formatter(&|y| format!("{y}"))
        .label_style(("sans-serif", 14))
        .draw()?;

    for (points, color, name) in [
        (&p.raw, RED, "raw tap writer (the limit)"),
        (&p.zcnet, BLUE, "zcnet"),
    ] {
        let points: Vec<(f64, Spread)> = points.iter().map(|p| (p.frame_len, p.gbit)).collect();
        median_line(&mut chart, &points, color, name)?;
    }
    // Values: the raw limit's above its point (clear of the rising line),
    // zcnet's and the ratio below.
    chart.draw_series(p.raw.iter().map(|p| {
        EmptyElement::at((p.frame_len, p.gbit.median))
            + Circle::new((0, 0), 4, RED.filled())
            + Text::new(
                format!("{:.3} Gbit/s", p.gbit.median),
                (-20, -10),
                ("sans-serif", 13)
                    .into_font()
                    .color(&RED)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
    }))?;
    chart.draw_series(p.zcnet.iter().zip(&p.ratios).map(|(p, ratio)| {
        let ratio = ratio.map_or(String::new(), |r| format!(", {r:.2} of raw"));
        EmptyElement::at((p.frame_len, p.gbit.median))
            + Circle::new((0, 0), 4, BLUE.filled())
            + Text::new(
                format!("{:.3} Gbit/s{ratio}", p.gbit.median),
                (10, 10),
                ("sans-serif", 13).into_font().color(&BLUE),
            )
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
