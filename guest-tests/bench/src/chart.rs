//! The two charts, on log scales with the median marked and the
//! repetitions' min..max as error bars:
//!
//! - `bench.svg`: TX throughput on one queue pair by frame size, zcnet
//!   against the raw tap limit, in Gbit/s.
//! - `bench-udp.svg`: zcnet's CPU seconds per GB by frame size through the
//!   UDP attachment to an ifb egress, zero-copy against copy, with the
//!   break-even size marked; below it, zero-copy's CPU per GB over copy's.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use thiserror::Error;

use crate::measure::tap::{Engine, Side};
use crate::report::sig3;
use crate::report::tap::TapRow;
use crate::report::udp::{UdpPoint, UdpRow, UdpSummary};
use crate::sample::Spread;
use crate::workload::{Carrier, Direction, Workload};

#[derive(Debug, Error)]
#[error("cannot draw the chart")]
pub struct ChartError(#[source] DrawingAreaErrorKind<std::io::Error>);

impl From<DrawingAreaErrorKind<std::io::Error>> for ChartError {
    fn from(e: DrawingAreaErrorKind<std::io::Error>) -> Self {
        ChartError(e)
    }
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// One point of a series: a frame size and a figure over the repetitions.
struct Point {
    x: f64,
    y: Spread,
}

/// A white page of `size` pixels with the title and the subtitle on top;
/// returns the page and the area under the titles.
fn page<'a>(
    path: &'a Path,
    size: (u32, u32),
    title: &str,
    title_size: u32,
    subtitle: &str,
) -> Result<(Area<'a>, Area<'a>), ChartError> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, rest) = root.split_vertically(70);
    top.draw(&Text::new(title, (20, 12), ("sans-serif", title_size)))?;
    top.draw(&Text::new(subtitle, (20, 44), ("sans-serif", 13)))?;
    Ok((root, rest))
}

/// The smallest positive minimum and the largest maximum of `points`;
/// None if there is nothing positive to put on a log scale.
fn extent(points: &[&Point]) -> Option<(f64, f64)> {
    let lo = points
        .iter()
        .map(|p| p.y.min)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.y.max).fold(0.0, f64::max);
    (lo.is_finite() && hi > 0.0).then_some((lo, hi))
}

/// Draws one labelled series through the medians of `points`, with the
/// repetitions' min..max as vertical error bars.
fn median_line<'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    points: &[Point],
    color: RGBColor,
    name: &str,
) -> Result<(), ChartError> {
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.x, p.y.median)),
            color.stroke_width(2),
        ))?
        .label(name)
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    chart.draw_series(
        points
            .iter()
            .map(|p| ErrorBar::new_vertical(p.x, p.y.min, p.y.median, p.y.max, color.filled(), 8)),
    )?;
    Ok(())
}

/// Marks each point with a dot and its value, the text `offset` pixels
/// away and anchored at `anchor`.
fn values<'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    points: impl IntoIterator<Item = ((f64, f64), String)>,
    color: RGBColor,
    offset: (i32, i32),
    anchor: Pos,
) -> Result<(), ChartError> {
    chart.draw_series(points.into_iter().map(|(at, text)| {
        EmptyElement::at(at)
            + Circle::new((0, 0), 4, color.filled())
            + Text::new(
                text,
                offset,
                ("sans-serif", 13).into_font().color(&color).pos(anchor),
            )
    }))?;
    Ok(())
}

/// The legend of the series drawn so far.
fn legend<'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, CT>,
    position: SeriesLabelPosition,
) -> Result<(), ChartError> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// The one-queue-pair TX workloads' points for zcnet and the raw tap, the
/// axis label of each frame size, and zcnet/raw at each.
struct TapPoints {
    /// zcnet with the uring engine, fed by the fake guest.
    zcnet: Vec<Point>,
    /// One writev per frame.
    raw: Vec<Point>,
    /// 64 writes per io_uring_enter.
    raw_uring: Vec<Point>,
    labels: Vec<(f64, String)>,
    /// zcnet over the batched writer.
    ratios: Vec<Option<f64>>,
}

fn tap_points(rows: &[TapRow]) -> TapPoints {
    let mut p = TapPoints {
        zcnet: Vec::new(),
        raw: Vec::new(),
        raw_uring: Vec::new(),
        labels: Vec::new(),
        ratios: Vec::new(),
    };
    let zcnet = Side::Zcnet(Engine::Uring);
    for w in Workload::ALL {
        if w.direction() != Direction::Tx || w.pairs() != 1 || w.carrier() != Carrier::Tap {
            continue;
        }
        let Some(s) = rows.iter().find(|s| s.workload == w.id()) else {
            continue;
        };
        let x = w.frame_len() as f64;
        if let Some(z) = s.get(zcnet) {
            p.zcnet.push(Point {
                x,
                y: z.gbit_per_second,
            });
            p.ratios.push(s.ratio(zcnet, Side::RawUring));
        }
        for (side, points) in [(Side::Raw, &mut p.raw), (Side::RawUring, &mut p.raw_uring)] {
            if let Some(r) = s.get(side) {
                points.push(Point {
                    x,
                    y: r.gbit_per_second,
                });
            }
        }
        let label = w.title().trim_start_matches("TX ");
        p.labels.push((
            x,
            if w.gso() {
                format!("{label} ({} B)", w.frame_len())
            } else {
                label.to_owned()
            },
        ));
    }
    p
}

/// `bench.svg`: zcnet's TX throughput against the raw tap writer's.
pub fn draw_tap(path: &Path, rows: &[TapRow], subtitle: &str) -> Result<(), ChartError> {
    let p = tap_points(rows);
    let all: Vec<&Point> = p.zcnet.iter().chain(&p.raw).chain(&p.raw_uring).collect();
    // Powers of ten that enclose every value with some room.
    let (y_lo, y_hi) = extent(&all).map_or((0.01, 100.0), |(lo, hi)| {
        (
            10f64.powf((lo / 2.0).log10().floor()),
            10f64.powf((hi * 2.0).log10().ceil()),
        )
    });
    let sizes: Vec<f64> = p.labels.iter().map(|(x, _)| *x).collect();
    let size_label = |x: &f64| {
        p.labels
            .iter()
            .find(|(at, _)| at == x)
            .map_or_else(|| format!("{x}"), |(_, l)| l.clone())
    };

    let (root, rest) = page(
        path,
        (960, 600),
        "zcnet TX throughput by frame size vs the raw tap limits (1 queue pair)",
        22,
        subtitle,
    )?;
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

    median_line(
        &mut chart,
        &p.raw_uring,
        GREEN,
        "raw tap, 64 writes per io_uring_enter (the limit)",
    )?;
    median_line(&mut chart, &p.raw, RED, "raw tap, one writev per frame")?;
    median_line(&mut chart, &p.zcnet, BLUE, "zcnet, --io-engine uring")?;
    // Values: the raw limit's above its point (clear of the rising line),
    // zcnet's and the ratio below.
    values(
        &mut chart,
        p.raw
            .iter()
            .map(|p| ((p.x, p.y.median), format!("{:.3} Gbit/s", p.y.median))),
        RED,
        (-20, -10),
        Pos::new(HPos::Center, VPos::Bottom),
    )?;
    values(
        &mut chart,
        p.zcnet.iter().zip(&p.ratios).map(|(p, ratio)| {
            let ratio = ratio.map_or(String::new(), |r| format!(", {r:.2} of io_uring"));
            (
                (p.x, p.y.median),
                format!("{:.3} Gbit/s{ratio}", p.y.median),
            )
        }),
        BLUE,
        (10, 10),
        Pos::new(HPos::Left, VPos::Top),
    )?;
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present()?;
    Ok(())
}

/// The CPU per GB of one mode at each frame size.
fn udp_points(u: &UdpSummary, row: fn(&UdpPoint) -> Option<&UdpRow>) -> Vec<Point> {
    u.points
        .iter()
        .filter_map(|p| {
            row(p).map(|r| Point {
                x: p.frame_len as f64,
                y: r.summary.cpu_seconds_per_gb,
            })
        })
        .filter(|p| p.y.median.is_finite() && p.y.median > 0.0)
        .collect()
}

/// A tick label: three significant digits, without trailing zeros.
fn tick(y: f64) -> String {
    let s = sig3(y);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// `bench-udp.svg`: zcnet's CPU per GB, zero-copy against copy.
pub fn draw_udp(path: &Path, u: &UdpSummary, subtitle: &str) -> Result<(), ChartError> {
    let zc = udp_points(u, |p| p.zero_copy.as_ref());
    let copy = udp_points(u, |p| p.copy.as_ref());
    let all: Vec<&Point> = zc.iter().chain(&copy).collect();
    // Some room around every value.
    let (y_lo, y_hi) = extent(&all).map_or((0.01, 10.0), |(lo, hi)| (lo / 1.6, hi * 1.6));
    let sizes: Vec<f64> = u.points.iter().map(|p| p.frame_len as f64).collect();
    let x_range = || {
        (1000f64..100_000f64)
            .log_scale()
            .with_key_points(sizes.clone())
    };

    let (root, rest) = page(
        path,
        (960, 760),
        "zcnet CPU per GB by frame size, UDP to an ifb egress: zero-copy vs copy (1 queue pair)",
        20,
        subtitle,
    )?;
    let (top, bottom) = rest.split_vertically(430);

    // Top: CPU per GB of each mode.
    let mut chart = ChartBuilder::on(&top)
        .margin(20)
        .margin_bottom(5)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range(), (y_lo..y_hi).log_scale())?;
    chart
        .configure_mesh()
        .y_desc("zcnet CPU s per GB (log scale)")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| tick(*y))
        .y_labels(8)
        .light_line_style(BLACK.mix(0.03))
        .label_style(("sans-serif", 14))
        .draw()?;
    if let Some(n) = u.break_even_frame_len {
        let x = n as f64;
        chart
            .draw_series(DashedLineSeries::new(
                [(x, y_lo), (x, y_hi)],
                6,
                4,
                BLACK.mix(0.6).stroke_width(1),
            ))?
            .label(format!("break-even: {n} B"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.6)));
    }
    // The lines fall to the right: copy's values above and right of its
    // points, zero-copy's below and left, both clear of the lines.
    for (points, color, name, offset, anchor) in [
        (
            &copy,
            RED,
            "copy (--zerocopy off)",
            (6, -6),
            Pos::new(HPos::Left, VPos::Bottom),
        ),
        (
            &zc,
            BLUE,
            "zero-copy (--zerocopy on --zerocopy-min-bytes 0)",
            (-6, 6),
            Pos::new(HPos::Right, VPos::Top),
        ),
    ] {
        median_line(&mut chart, points, color, name)?;
        let labels = points
            .iter()
            .map(|p| ((p.x, p.y.median), format!("{:.3}", p.y.median)));
        values(&mut chart, labels, color, offset, anchor)?;
    }
    legend(&mut chart, SeriesLabelPosition::LowerLeft)?;

    // Bottom: zero-copy over copy; below 1, lending is cheaper.
    let ratios: Vec<(f64, f64)> = u
        .points
        .iter()
        .filter_map(|p| p.cpu_per_gb_ratio.map(|r| (p.frame_len as f64, r)))
        .collect();
    let r_hi = ratios.iter().map(|r| r.1).fold(1.0, f64::max) * 1.25;
    let mut chart = ChartBuilder::on(&bottom)
        .margin(20)
        .margin_top(5)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range(), 0f64..r_hi)?;
    chart
        .configure_mesh()
        .x_desc("Ethernet frame size in bytes, one per UDP datagram (log scale)")
        .y_desc("zero-copy / copy")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.1}"))
        .y_labels(6)
        .light_line_style(BLACK.mix(0.03))
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        [(1000.0, 1.0), (100_000.0, 1.0)],
        6,
        4,
        BLACK.mix(0.6).stroke_width(1),
    ))?;
    chart.draw_series(LineSeries::new(
        ratios.iter().copied(),
        BLACK.stroke_width(2),
    ))?;
    values(
        &mut chart,
        ratios.iter().map(|&(x, r)| ((x, r), format!("{r:.2}"))),
        BLACK,
        (0, -8),
        Pos::new(HPos::Center, VPos::Bottom),
    )?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::udp::UdpSample;
    use crate::report::udp;
    use crate::udp::{TxMode, SWEEP};

    /// One window that cost `us_per_frame` microseconds of zcnet CPU.
    fn sample(mode: TxMode, frame_len: usize, us_per_frame: f64) -> UdpSample {
        let frames = 100_000;
        let cpu_seconds = us_per_frame * frames as f64 / 1e6;
        UdpSample::fake(mode, frame_len, frames, cpu_seconds, 0.05, 1.05)
    }

    #[test]
    fn draws_the_sweep() {
        // A fixed cost per frame, plus a copy per byte or a pin per page.
        let samples: Vec<UdpSample> = SWEEP
            .iter()
            .flat_map(|&n| {
                [
                    sample(TxMode::Copy, n, 2.6 + n as f64 * 7e-5),
                    sample(TxMode::ZeroCopy, n, 3.0 + n.div_ceil(4096) as f64 * 0.06),
                ]
            })
            .collect();
        let u = udp::summarize(&samples, &SWEEP);
        assert_eq!(u.break_even_frame_len, Some(8192));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench-udp.svg");
        draw_udp(&path, &u, "test").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("break-even: 8192 B"), "{svg}");
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick(0.700_000_000_1), "0.7");
        assert_eq!(tick(0.125), "0.125");
        assert_eq!(tick(2.0), "2");
        assert_eq!(tick(300.0), "300");
    }
}
