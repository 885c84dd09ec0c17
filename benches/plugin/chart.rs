//! Charts (SVG).

use super::*;

/// Empirical CDFs of `series` (ms) into an SVG.
pub(crate) fn cdf_chart(path: &Path, title: &str, series: &[(String, Vec<f64>)]) {
    use plotters::prelude::*;
    if series.is_empty() {
        return;
    }
    let all: Vec<f64> = series.iter().flat_map(|(_, v)| v.iter().copied()).collect();
    let mut sorted = all.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // Cut the long tail so the bulk stays readable.
    let xmax = pct(&sorted, 99.5) * 1.05;
    let xmin = 0f64;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).unwrap();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(55)
        .build_cartesian_2d(xmin..xmax, 0f64..1f64)
        .unwrap();
    chart
        .configure_mesh()
        .x_desc("latency per container (ms)")
        .y_desc("fraction of containers ≤ x")
        .draw()
        .unwrap();
    for (i, (name, v)) in series.iter().enumerate() {
        let mut s = v.clone();
        s.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = s.len() as f64;
        let pts: Vec<(f64, f64)> = s
            .iter()
            .enumerate()
            .filter(|(_, x)| **x <= xmax)
            .map(|(k, x)| (*x, (k + 1) as f64 / n))
            .collect();
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts, color.stroke_width(2)))
            .unwrap()
            .label(format!("{name} (p50 {} ms)", f(pct(&s, 50.0))))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .unwrap();
    root.present().unwrap();
}
