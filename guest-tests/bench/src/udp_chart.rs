//! `bench-udp.svg`: zcnet's CPU seconds per GB by frame size through the
//! UDP attachment to an ifb egress, zero-copy against copy, on log scales,
//! with the median marked, the repetitions' min..max as error bars and the
//! break-even size marked; below it, zero-copy's CPU per GB over copy's.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::chart::{median_line, ChartError};
use crate::report::{sig3, Spread};
use crate::udp_report::{UdpRow, UdpSummary};

/// One point: a frame size and the CPU per GB it cost.
struct Point {
    frame_len: f64,
    cpu: Spread,
}

fn points(u: &UdpSummary, row: fn(&crate::udp_report::UdpPoint) -> Option<&UdpRow>) -> Vec<Point> {
    u.points
        .iter()
        .filter_map(|p| {
            row(p).map(|r| Point {
                frame_len: p.frame_len as f64,
                cpu: r.cpu_seconds_per_gb,
            })
        })
        .filter(|p| p.cpu.median.is_finite() && p.cpu.median > 0.0)
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

/// A log range with some room around every value.
fn y_range(points: &[&Point]) -> (f64, f64) {
    let lo = points
        .iter()
        .map(|p| p.cpu.min)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.cpu.max).fold(0.0, f64::max);
    if !lo.is_finite() || hi <= 0.0 {
        return (0.01, 10.0);
    }
    (lo / 1.6, hi * 1.6)
}

pub fn draw(path: &Path, u: &UdpSummary, subtitle: &str) -> Result<(), ChartError> {
    let zc = points(u, |p| p.zero_copy.as_ref());
    let copy = points(u, |p| p.copy.as_ref());
    let all: Vec<&Point> = zc.iter().chain(&copy).collect();
    let (y_lo, y_hi) = y_range(&all);
    let sizes: Vec<f64> = u.points.iter().map(|p| p.frame_len as f64).collect();
    let x_range = || {
        (1000f64..100_000f64)
            .log_scale()
            .with_key_points(sizes.clone())
    };

    let root = SVGBackend::new(path, (960, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, rest) = root.split_vertically(70);
    title.draw(&Text::new(
        "zcnet CPU per GB by frame size, UDP to an ifb egress: zero-copy vs copy (1 queue pair)",
        (20, 12),
        ("sans-serif", 20),
    ))?;
    title.draw(&Text::new(subtitle, (20, 44), ("sans-serif", 13)))?;
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
    for (points, color, name) in [
        (&copy, RED, "copy (--zerocopy off)"),
        (
            &zc,
            BLUE,
            "zero-copy (--zerocopy on --zerocopy-min-bytes 0)",
        ),
    ] {
        let series: Vec<(f64, Spread)> = points.iter().map(|p| (p.frame_len, p.cpu)).collect();
        median_line(&mut chart, &series, color, name)?;
        // The lines fall to the right: copy's values above and right of
        // its points, zero-copy's below and left, both clear of the lines.
        let (offset, pos) = if color == RED {
            ((6, -6), Pos::new(HPos::Left, VPos::Bottom))
        } else {
            ((-6, 6), Pos::new(HPos::Right, VPos::Top))
        };
        chart.draw_series(points.iter().map(|p| {
            EmptyElement::at((p.frame_len, p.cpu.median))
                + Circle::new((0, 0), 4, color.filled())
                + Text::new(
                    format!("{:.3}", p.cpu.median),
                    offset,
                    ("sans-serif", 13).into_font().color(&color).pos(pos),
                )
        }))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;

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
    chart.draw_series(ratios.iter().map(|&(x, r)| {
        EmptyElement::at((x, r))
            + Circle::new((0, 0), 4, BLACK.filled())
            + Text::new(
                format!("{r:.2}"),
                (0, -8),
                ("sans-serif", 13)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
    }))?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::{TxMode, SWEEP};
    use crate::udp_measure::{UdpSample, ZcnetTxCounters};
    use crate::udp_report;

    /// One window that cost `us_per_frame` microseconds of zcnet CPU.
    fn sample(mode: TxMode, frame_len: usize, us_per_frame: f64) -> UdpSample {
        let frames = 100_000;
        UdpSample {
            mode,
            frame_len,
            repetition: 0,
            buffers: 10,
            buffer_span_bytes: 10 * frame_len as u64,
            warmup_seconds: 1.0,
            seconds: 1.0,
            frames,
            bytes: frames * frame_len as u64,
            cpu_seconds: us_per_frame * frames as f64 / 1e6,
            feeder_cpu_seconds: 0.05,
            machine_busy_seconds: 1.05,
            steal_seconds: 0.0,
            zcnet: ZcnetTxCounters::default(),
        }
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
        let u = udp_report::summarize(&samples, &SWEEP);
        assert_eq!(u.break_even_frame_len, Some(8192));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench-udp.svg");
        draw(&path, &u, "test").unwrap();
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
