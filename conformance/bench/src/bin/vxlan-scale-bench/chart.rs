//! The chart (`vxlan-scale.svg`): cold start time against peers, and the join burst over time.

use serde_json::Value;

use crate::table::GOAL_COLD_MS;

/// The chart: cold start time against peers (median, min–max, the 2 s goal), and the join
/// burst's writes and programmed routes over time.
pub fn chart(doc: &Value) -> String {
    let mut svg = String::new();
    if let Err(e) = draw_chart(doc, &mut svg) {
        eprintln!("vxlan-scale-bench: chart not drawn: {e}");
    }
    svg
}

pub fn draw_chart(doc: &Value, svg: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let root = SVGBackend::with_string(svg, (1100, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);

    let sizes: Vec<&Value> = doc["cold_start"]["by_size"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let max_peers = sizes.iter().map(|b| f(&b["peers"])).fold(1.0, f64::max);
    let max_ms = sizes
        .iter()
        .map(|b| f(&b["programmed_max_ms"]))
        .filter(|x| x.is_finite())
        .fold(GOAL_COLD_MS, f64::max);
    let mut c = ChartBuilder::on(&left)
        .caption(
            "cold start: agent start → all peers programmed",
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..max_peers * 1.05, 0f64..max_ms * 1.15)?;
    c.configure_mesh()
        .light_line_style(WHITE)
        .x_desc("peers in etcd")
        .y_desc("ms")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let medians: Vec<(f64, f64)> = sizes
        .iter()
        .map(|b| (f(&b["peers"]), f(&b["programmed_median_ms"])))
        .filter(|(_, y)| y.is_finite())
        .collect();
    c.draw_series(LineSeries::new(medians.clone(), BLUE.stroke_width(2)))?
        .label("median")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE.stroke_width(2)));
    c.draw_series(medians.iter().map(|&p| Circle::new(p, 4, BLUE.filled())))?;
    c.draw_series(sizes.iter().filter_map(|b| {
        let (x, lo, hi) = (
            f(&b["peers"]),
            f(&b["programmed_min_ms"]),
            f(&b["programmed_max_ms"]),
        );
        (lo.is_finite() && hi.is_finite())
            .then(|| PathElement::new(vec![(x, lo), (x, hi)], BLUE.stroke_width(1)))
    }))?
    .label("min–max")
    .legend(|(x, y)| PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], BLUE));
    c.draw_series(LineSeries::new(
        vec![(0.0, GOAL_COLD_MS), (max_peers * 1.05, GOAL_COLD_MS)],
        RED.stroke_width(1),
    ))?
    .label("goal at 5,000 peers: < 2 s")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let join = &doc["join"];
    let points: Vec<(f64, f64, f64)> = join["timeline_ms_written_routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()?, p[2].as_f64()?)))
        .collect();
    let base = f(&doc["sizes"]["join_base"]);
    let t_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let n_max = points
        .iter()
        .map(|p| p.2.max(p.1 + base))
        .fold(base + 1.0, f64::max);
    let mut c = ChartBuilder::on(&right)
        .caption(
            format!(
                "{} joins one by one onto {base} peers",
                f(&doc["sizes"]["joins"])
            ),
            ("sans-serif", 16),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..t_max * 1.05, (base * 0.98).floor()..n_max * 1.01)?;
    c.configure_mesh()
        .light_line_style(WHITE)
        .x_desc("ms since the first write")
        .y_desc("peers")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    c.draw_series(LineSeries::new(
        points.iter().map(|p| (p.0, base + p.1)),
        BLACK.stroke_width(1),
    ))?
    .label("records written to etcd")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLACK));
    c.draw_series(LineSeries::new(
        points.iter().map(|p| (p.0, p.2)),
        GREEN.stroke_width(2),
    ))?
    .label("routes on the VXLAN device")
    .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], GREEN.stroke_width(2)));
    c.configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
