//! The report's chart: packet rates and HTTP connection rates, side by
//! side, as horizontal bars.

use std::path::Path;

use anyhow::Context as _;
use plotters::{
    prelude::*,
    style::{FontStyle, register_font},
};

use super::{http::HttpPath, pps::Case, report::Report};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const FORWARDER: RGBColor = RGBColor(31, 119, 180);
const CEILING: RGBColor = RGBColor(150, 150, 150);
const OTHER: RGBColor = RGBColor(230, 126, 34);

/// One bar.
struct Bar {
    label: String,
    value: f64,
    color: RGBColor,
    text: String,
}

fn rate_color(case: Case) -> RGBColor {
    match case {
        Case::XdpDrop | Case::TrivialForwarder => CEILING,
        Case::ForwarderSnatEstablished
        | Case::ForwarderSnatEstablishedTc
        | Case::ForwarderPreserveEstablished
        | Case::ForwarderSnatNewFlows
        | Case::ForwarderPreserveNewFlows => FORWARDER,
        Case::NftablesDnat | Case::NginxUdp => OTHER,
    }
}

fn http_color(path: HttpPath) -> RGBColor {
    match path {
        HttpPath::Direct => CEILING,
        HttpPath::ForwarderSnat
        | HttpPath::ForwarderPreserve
        | HttpPath::ForwarderSnatTc
        | HttpPath::ForwarderPreserveTc => FORWARDER,
        HttpPath::Nftables | HttpPath::NginxTcp | HttpPath::HaproxyTcp => OTHER,
    }
}

fn register() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| format!("{FONT} (Debian: fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{FONT}: not a font"))?;
    Ok(())
}

/// Draws `report`'s chart into `path` (PNG).
pub fn draw(report: &Report, path: &Path) -> anyhow::Result<()> {
    register()?;
    let rates: Vec<Bar> = report
        .packet_rates
        .iter()
        .map(|r| Bar {
            label: r.label.clone(),
            value: r.mpps,
            color: rate_color(r.case),
            text: format!("{:.2}", r.mpps),
        })
        .collect();
    let http: Vec<Bar> = report
        .http
        .iter()
        .map(|r| Bar {
            label: r.label.clone(),
            value: r.per_second,
            color: http_color(r.path),
            text: format!("{:.0}  (p99 {:.1} ms)", r.per_second, r.p99_ms),
        })
        .collect();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    panel(&left, "Packet rate, 60-byte UDP (Mpps)", &rates)?;
    panel(&right, "HTTP connections per second (one request each)", &http)?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    bars: &[Bar],
) -> anyhow::Result<()> {
    let max = bars.iter().map(|b| b.value).filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-9);
    let rows = bars.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(28)
        .build_cartesian_2d(0.0..max * 1.35, rows..0.0)?;
    let decimals = if max >= 100.0 { 0 } else { 1 };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_labels(6)
        .x_label_formatter(&|x| format!("{x:.decimals$}"))
        .draw()?;
    for (i, bar) in bars.iter().enumerate() {
        let top = i as f64 + 0.45;
        let value = if bar.value.is_finite() { bar.value } else { 0.0 };
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, top), (value, top + 0.4)],
            bar.color.filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            bar.label.clone(),
            (max * 0.005, i as f64 + 0.08),
            ("sans-serif", 15),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            bar.text.clone(),
            (value + max * 0.01, top + 0.05),
            ("sans-serif", 14),
        )))?;
    }
    Ok(())
}
