//! `cni-bench`'s chart (`bench.svg`): median ADD and DEL latency per plugin as grouped bars,
//! drawn with plotters from the report's JSON, so it can be redrawn from a committed
//! `bench.json` without running the benchmark again.

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

/// One bar colour per plugin, in the report's order (ours, the reference, the overlay).
const COLOURS: [RGBColor; 3] = [
    RGBColor(0x2b, 0x7b, 0xba),
    RGBColor(0xc0, 0x50, 0x4d),
    RGBColor(0x6a, 0x9f, 0x3a),
];

/// The two panels: one pod at a time and all at once differ by two orders of magnitude, so
/// each gets its own scale (on one scale the sequential bars would be a few pixels tall).
/// Each panel's bars: (the report's key, the group's name).
const PANELS: [[(&str, &str); 2]; 2] = [
    [("add", "ADD"), ("del", "DEL")],
    [("add_concurrent", "ADD"), ("del_concurrent", "DEL")],
];

/// The SVG of `bench.json`'s medians: a panel for sequential and one for concurrent calls,
/// ADD and DEL side by side in each, a bar per plugin labelled with its value in ms.
pub fn latency_bars(doc: &Value) -> Result<String, String> {
    let mut svg = String::new();
    draw(doc, &mut svg).map_err(|e| format!("drawing bench.svg: {e}"))?;
    Ok(svg)
}

fn draw(doc: &Value, svg: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    let results: Vec<&Value> = doc["results"].as_array().into_iter().flatten().collect();
    if results.is_empty() {
        return Err("the report has no results".into());
    }
    let root = SVGBackend::with_string(svg, (900, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(40);
    top.draw(&Text::new(
        "median ADD and DEL latency per exec (ms), lower is better",
        (20, 14),
        ("sans-serif", 16),
    ))?;
    let (panels, legend) = body.split_vertically(320);
    let (left, right) = panels.split_horizontally(450);
    let captions = [
        format!("one pod at a time ({} rounds)", doc["rounds"]),
        format!("{} pods at once", doc["concurrency"]),
    ];
    for ((verbs, caption), area) in PANELS.iter().zip(captions).zip([&left, &right]) {
        panel(area, caption, verbs, &results, &root)?;
    }
    // The legend under both panels: one swatch per plugin.
    // Up to three plugins at 280 px each; more (the dual-stack rows) share the width.
    let step = (860 / results.len().max(1) as i32).min(280);
    for (i, r) in results.iter().enumerate() {
        let x = 40 + step * i as i32;
        let colour = COLOURS[i % COLOURS.len()];
        legend.draw(&Rectangle::new([(x, 12), (x + 14, 26)], colour.filled()))?;
        legend.draw(&Text::new(
            r["plugin"].as_str().unwrap_or("?").to_owned(),
            (x + 20, 13),
            ("sans-serif", 14),
        ))?;
    }
    root.present()?;
    Ok(())
}

/// One panel: two groups of bars (ADD, DEL), one bar per plugin.
fn panel(
    area: &DrawingArea<SVGBackend, Shift>,
    caption: String,
    verbs: &[(&str, &str); 2],
    results: &[&Value],
    root: &DrawingArea<SVGBackend, Shift>,
) -> Result<(), Box<dyn std::error::Error>> {
    let median = |r: &Value, key: &str| r[key]["median_ms"].as_f64().unwrap_or(f64::NAN);
    let max = results
        .iter()
        .flat_map(|r| verbs.iter().map(|(k, _)| median(r, k)))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(1.0);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 14))
        .margin(10)
        .x_label_area_size(24)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..2f64, 0f64..max * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .light_line_style(WHITE)
        .y_desc("ms")
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    let n = results.len() as f64;
    // Each group takes 0.8 of its unit, split evenly between the plugins.
    let width = 0.8 / n;
    let label = ("sans-serif", 12)
        .into_font()
        .into_text_style(area)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    for (ri, r) in results.iter().enumerate() {
        let colour = COLOURS[ri % COLOURS.len()];
        let bars = verbs.iter().enumerate().map(|(gi, (key, _))| {
            let x0 = gi as f64 + 0.1 + ri as f64 * width;
            let v = median(r, key);
            Rectangle::new([(x0 + 0.01, 0.0), (x0 + width - 0.01, v)], colour.filled())
        });
        chart.draw_series(bars)?;
        let values = verbs.iter().enumerate().map(|(gi, (key, _))| {
            let x = gi as f64 + 0.1 + (ri as f64 + 0.5) * width;
            let v = median(r, key);
            EmptyElement::at((x, v)) + Text::new(format!("{v:.1}"), (0, -3), label.clone())
        });
        chart.draw_series(values)?;
    }
    // The group names under the axis, at each group's centre (the x axis itself carries no
    // numbers: its unit is "a group").
    let name = ("sans-serif", 14)
        .into_font()
        .into_text_style(root)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (gi, (_, verb)) in verbs.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(gi as f64 + 0.5, 0.0));
        root.draw(&Text::new(verb.to_string(), (x, y + 6), name.clone()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(plugin: &str, ms: f64) -> Value {
        let s = json!({"median_ms": ms, "p99_ms": ms, "n": 3, "max_rss_kb": 1000});
        json!({"plugin": plugin, "add": s, "del": s, "add_concurrent": s, "del_concurrent": s,
               "binary_bytes": 1})
    }

    #[test]
    fn every_plugin_has_a_bar_and_a_legend_entry() {
        let doc = json!({"rounds": 3, "concurrency": 5,
            "results": [result("ours", 2.5), result("theirs", 11.0)]});
        let svg = latency_bars(&doc).expect("drawn");
        // Two panels x two groups x one bar per plugin, each labelled with its value.
        // plotters writes each text on a line of its own inside its <text> element.
        assert_eq!(svg.matches(">\n2.5\n</text>").count(), 4, "{svg}");
        assert_eq!(svg.matches(">\n11.0\n</text>").count(), 4, "{svg}");
        assert!(
            svg.contains(">\nours\n</text>") && svg.contains(">\ntheirs\n</text>"),
            "{svg}"
        );
        assert!(svg.contains("5 pods at once"), "{svg}");
    }

    #[test]
    fn a_report_without_results_is_an_error() {
        assert!(latency_bars(&json!({"results": []})).is_err());
    }
}
