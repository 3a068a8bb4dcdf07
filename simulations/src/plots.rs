//! The report's plots, each as SVG and PNG (plotters): delivery latency CDF,
//! convergence timeline across partition and heal, messages per side, bytes
//! on the wire, connections per node.
//!
//! Text is laid out and rendered with ab_glyph from a TrueType font read at
//! run time ([`FONT_PATHS`], or `STARLING_SIM_FONT`), so the build needs no
//! fontconfig or freetype; without a font the plots are skipped and the
//! report says so (`scripts/install-deps.sh` installs DejaVu).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::anyhow;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::report::latencies;
use crate::runner::Outcome;
use crate::scenario::Scenario;

/// Where PNG text's font is looked for (Debian's `fonts-dejavu-core` first).
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];
/// Largest font file read.
pub const FONT_BYTES_MAX: u64 = 16 * 1024 * 1024;
const SIZE: (u32, u32) = (960, 540);

/// One line chart.
pub struct Chart {
    /// File stem.
    pub file: String,
    /// Title.
    pub title: String,
    /// X axis label.
    pub x: &'static str,
    /// Y axis label.
    pub y: &'static str,
    /// Named series of points.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Vertical markers (x, label): partitions, heals.
    pub markers: Vec<(f64, String)>,
}

fn font_ready() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        let from_env = std::env::var("STARLING_SIM_FONT").ok();
        let candidates = from_env
            .iter()
            .map(String::as_str)
            .chain(FONT_PATHS.iter().copied());
        for path in candidates {
            let fits = std::fs::metadata(path).is_ok_and(|m| m.len() <= FONT_BYTES_MAX);
            if let (true, Ok(bytes)) = (fits, std::fs::read(path)) {
                // plotters keeps fonts for the process's life; one leak, once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow!("plotting {}: {e:?}", chart.file);
    root.fill(&WHITE).map_err(err)?;
    let points = chart.series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (1e-9f64, 1e-9f64);
    let (mut x_min, mut y_min) = (0f64, 0f64);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
        x_min = x_min.min(x);
        y_min = y_min.min(y);
    }
    for (x, _) in &chart.markers {
        x_max = x_max.max(*x);
    }
    let mut ctx = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x_min..x_max * 1.02, y_min..y_max * 1.08)
        .map_err(err)?;
    ctx.configure_mesh()
        .x_desc(chart.x)
        .y_desc(chart.y)
        .draw()
        .map_err(err)?;
    for (k, (name, points)) in chart.series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        ctx.draw_series(LineSeries::new(
            points.iter().copied(),
            colour.stroke_width(2),
        ))
        .map_err(err)?
        .label(name.as_str())
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    for (x, label) in &chart.markers {
        let line = vec![(*x, y_min), (*x, y_max * 1.05)];
        ctx.draw_series(std::iter::once(PathElement::new(
            line,
            BLACK.mix(0.5).stroke_width(1),
        )))
        .map_err(err)?;
        ctx.draw_series(std::iter::once(Text::new(
            label.clone(),
            (*x, y_max * 1.05),
            ("sans-serif", 14),
        )))
        .map_err(err)?;
    }
    if chart.series.len() > 1 {
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Writes `chart` as SVG and (with a font) PNG into `dir`; returns the files written.
pub fn write(chart: &Chart, dir: &Path) -> anyhow::Result<Vec<String>> {
    if !font_ready() {
        return Err(anyhow!(
            "no TrueType font found (tried {FONT_PATHS:?}); set STARLING_SIM_FONT"
        ));
    }
    let svg = dir.join(format!("{}.svg", chart.file));
    draw(SVGBackend::new(&svg, SIZE).into_drawing_area(), chart)?;
    let png = dir.join(format!("{}.png", chart.file));
    draw(BitMapBackend::new(&png, SIZE).into_drawing_area(), chart)?;
    Ok(vec![
        format!("{}.svg", chart.file),
        format!("{}.png", chart.file),
    ])
}

/// The five charts of one variant.
pub fn charts(scenario: &Scenario, outcome: &Outcome) -> Vec<Chart> {
    let v = &outcome.variant.name;
    let mut markers = Vec::new();
    for t in &outcome.plan.partitions_s {
        markers.push((*t, "partition".to_owned()));
    }
    for t in &outcome.plan.heals_s {
        markers.push((*t, "heal".to_owned()));
    }
    let groups: Vec<String> = scenario.groups.iter().map(|g| g.name.clone()).collect();
    let of_group = |g: usize| -> Vec<usize> {
        (0..outcome.plan.names.len())
            .filter(|&i| outcome.plan.groups[i] == g)
            .collect()
    };

    let mut lat = latencies(outcome);
    lat.sort_by(f64::total_cmp);
    let total = lat.len().max(1) as f64;
    let cdf: Vec<(f64, f64)> = lat
        .iter()
        .enumerate()
        .map(|(k, x)| (*x, (k + 1) as f64 / total))
        .collect();

    let distinct: Vec<(f64, f64)> = outcome
        .samples
        .iter()
        .map(|s| (s.t_s, s.distinct_heads as f64))
        .collect();
    let accepted_total = outcome
        .written
        .iter()
        .filter(|w| w.id.is_some())
        .count()
        .max(1) as f64;
    let nodes = outcome.plan.names.len().max(1) as f64;
    let delivered: Vec<(f64, f64)> = outcome
        .samples
        .iter()
        .map(|s| {
            (
                s.t_s,
                s.held.iter().sum::<usize>() as f64 / (accepted_total * nodes) * 100.0,
            )
        })
        .collect();

    let mut per_side = Vec::new();
    for (g, name) in groups.iter().enumerate() {
        let members = of_group(g);
        let mean: Vec<(f64, f64)> = outcome
            .samples
            .iter()
            .map(|s| {
                (
                    s.t_s,
                    members.iter().map(|&i| s.held[i] as f64).sum::<f64>()
                        / members.len().max(1) as f64,
                )
            })
            .collect();
        per_side.push((format!("{name}: held (mean)"), mean));
        let mut written: Vec<f64> = outcome
            .written
            .iter()
            .filter(|w| outcome.plan.groups[w.node] == g)
            .filter_map(|w| w.accepted_s)
            .collect();
        written.sort_by(f64::total_cmp);
        per_side.push((
            format!("{name}: written"),
            written
                .iter()
                .enumerate()
                .map(|(k, t)| (*t, (k + 1) as f64))
                .collect(),
        ));
    }

    let mut bytes = Vec::new();
    for (a, na) in groups.iter().enumerate() {
        for (b, nb) in groups.iter().enumerate() {
            let series: Vec<(f64, f64)> = outcome
                .stats
                .iter()
                .map(|s| (s.t_s, s.fabric.group_bytes[a][b] as f64 / 1e6))
                .collect();
            bytes.push((format!("{na} -> {nb}"), series));
        }
    }

    let conn = |f: fn(&[usize]) -> f64| -> Vec<(f64, f64)> {
        outcome
            .stats
            .iter()
            .map(|s| {
                let up: Vec<usize> = s.connections.iter().flatten().copied().collect();
                (s.t_s, if up.is_empty() { 0.0 } else { f(&up) })
            })
            .collect()
    };
    vec![
        Chart {
            file: format!("{v}-latency-cdf"),
            title: format!("{} / {v}: message delivery latency", scenario.name),
            x: "seconds from acceptance at the writer to arrival at a member",
            y: "share of deliveries",
            series: vec![("deliveries".into(), cdf)],
            markers: vec![],
        },
        Chart {
            file: format!("{v}-convergence"),
            title: format!("{} / {v}: convergence", scenario.name),
            x: "seconds",
            y: "distinct heads; % of deliveries done",
            series: vec![
                ("distinct heads (online)".into(), distinct),
                ("% delivered".into(), delivered),
            ],
            markers: markers.clone(),
        },
        Chart {
            file: format!("{v}-messages-per-side"),
            title: format!("{} / {v}: messages per side", scenario.name),
            x: "seconds",
            y: "messages",
            series: per_side,
            markers: markers.clone(),
        },
        Chart {
            file: format!("{v}-bytes-on-wire"),
            title: format!("{} / {v}: bytes on the wire (UDP payload)", scenario.name),
            x: "seconds",
            y: "MB sent, cumulative",
            series: bytes,
            markers: markers.clone(),
        },
        Chart {
            file: format!("{v}-connections"),
            title: format!("{} / {v}: connections per node", scenario.name),
            x: "seconds",
            y: "connections",
            series: vec![
                ("min".into(), conn(|c| *c.iter().min().unwrap_or(&0) as f64)),
                (
                    "mean".into(),
                    conn(|c| c.iter().sum::<usize>() as f64 / c.len() as f64),
                ),
                ("max".into(), conn(|c| *c.iter().max().unwrap_or(&0) as f64)),
            ],
            markers,
        },
    ]
}
