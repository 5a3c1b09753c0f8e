//! SVG pictures of the report's figures (plotters, SVG backend only: text is
//! laid out by estimate, so no font is needed on the machine).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

/// Where the pictures go, and the markdown that embeds them.
#[derive(Debug)]
pub struct Plots {
    dir: PathBuf,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// One line of a line chart: a name and its (x, y) points.
pub type Series = (String, Vec<(f64, f64)>);

impl Plots {
    /// Pictures under `dir`.
    pub fn new(dir: &Path) -> Self {
        Plots {
            dir: dir.to_path_buf(),
        }
    }

    fn embed(name: &str, title: &str, drawn: Result<(), String>) -> String {
        match drawn {
            Ok(()) => format!("![{title}]({name})\n\n"),
            Err(e) => format!("(plot {name} not drawn: {e})\n\n"),
        }
    }

    /// A line chart of `series` with a logarithmic x axis (cache sizes).
    pub fn lines(
        &self,
        name: &str,
        title: &str,
        x_label: &str,
        y_label: &str,
        series: &[Series],
    ) -> String {
        let path = self.dir.join(name);
        let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
            let points = series.iter().flat_map(|(_, p)| p.iter());
            let (mut x_lo, mut x_hi, mut y_hi) = (f64::MAX, f64::MIN, 0f64);
            for &(x, y) in points {
                x_lo = x_lo.min(x);
                x_hi = x_hi.max(x);
                y_hi = y_hi.max(y);
            }
            if x_lo >= x_hi {
                return Err("fewer than two x values".into());
            }
            let root = SVGBackend::new(&path, (720, 420)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d((x_lo..x_hi).log_scale(), 0f64..(y_hi * 1.1).max(1.0))?;
            chart
                .configure_mesh()
                .light_line_style(WHITE)
                .x_desc(x_label)
                .y_desc(y_label)
                .draw()?;
            for (i, (label, points)) in series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(
                        points.iter().copied(),
                        color.stroke_width(2),
                    ))?
                    .label(label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart.draw_series(
                    points
                        .iter()
                        .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                )?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
            root.present()?;
            Ok(())
        })()
        .map_err(|e| e.to_string());
        Self::embed(name, title, drawn)
    }

    /// A bar chart: one bar per `(label, value)`.
    pub fn bars(&self, name: &str, title: &str, y_label: &str, bars: &[(String, f64)]) -> String {
        let path = self.dir.join(name);
        let drawn = (|| -> Result<(), Box<dyn std::error::Error>> {
            if bars.is_empty() {
                return Err("no bars".into());
            }
            let y_hi = bars.iter().map(|(_, v)| *v).fold(0f64, f64::max).max(1.0) * 1.15;
            let root = SVGBackend::new(&path, (720, 380)).into_drawing_area();
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(70)
                // A segmented range has one segment per value, its end included.
                .build_cartesian_2d((0..bars.len() - 1).into_segmented(), 0f64..y_hi)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .light_line_style(WHITE)
                .y_desc(y_label)
                .y_label_formatter(&|v| format!("{v:.0}"))
                .x_label_formatter(&|segment| match segment {
                    SegmentValue::CenterOf(i) => {
                        bars.get(*i).map_or(String::new(), |b| b.0.clone())
                    }
                    _ => String::new(),
                })
                .draw()?;
            chart.draw_series(bars.iter().enumerate().map(|(i, (_, value))| {
                let color = COLORS[i % COLORS.len()];
                let mut bar = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), 0.0),
                        (SegmentValue::Exact(i + 1), *value),
                    ],
                    color.filled(),
                );
                bar.set_margin(0, 0, 20, 20);
                bar
            }))?;
            root.present()?;
            Ok(())
        })()
        .map_err(|e| e.to_string());
        Self::embed(name, title, drawn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_as_svg() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plots = Plots::new(dir.path());
        let md = plots.lines(
            "l.svg",
            "hit ratio",
            "cache size (% of data)",
            "hit ratio (%)",
            &[("a".into(), vec![(0.5, 10.0), (25.0, 60.0)])],
        );
        assert_eq!(md, "![hit ratio](l.svg)\n\n");
        let md = plots.bars(
            "b.svg",
            "ops",
            "ops/s",
            &[("x".into(), 3.0), ("y".into(), 5.0)],
        );
        assert!(md.starts_with("![ops](b.svg)"), "{md}");
        for file in ["l.svg", "b.svg"] {
            let svg = std::fs::read_to_string(dir.path().join(file)).expect("svg");
            assert!(svg.starts_with("<svg") && svg.contains("</svg>"), "{file}");
        }
        let none = plots.lines("n.svg", "t", "x", "y", &[]);
        assert!(none.contains("not drawn"), "{none}");
    }
}
