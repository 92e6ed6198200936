//! A small hand-written SVG line chart: requests/s against clients (log scale), one line per
//! helper and descriptor kind.

use crate::compare::{CompareResults, C_HELPER, OURS};

const W: f64 = 720.0;
const H: f64 = 420.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A tick step of 1, 2 or 5 × 10ⁿ giving about five ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

/// The plot for one or more comparison runs.
pub fn throughput_plot(sets: &[&CompareResults]) -> String {
    let mut series = Vec::new();
    for (si, r) in sets.iter().enumerate() {
        for (hi, helper) in [C_HELPER, OURS].iter().enumerate() {
            if let Some(points) = r.summary.get(*helper) {
                let pts: Vec<(f64, f64)> = points
                    .iter()
                    .map(|p| (f64::from(p.clients), p.requests_per_s))
                    .collect();
                let colour = match (hi, si % 2) {
                    (0, 0) => "#c0392b",
                    (0, _) => "#e67e22",
                    (_, 0) => "#2471a3",
                    _ => "#17a589",
                };
                let dash = if si % 2 == 1 {
                    " stroke-dasharray=\"6 4\""
                } else {
                    ""
                };
                series.push((format!("{helper}, {}", r.label), colour, dash, pts));
            }
        }
    }
    let all = series.iter().flat_map(|s| s.3.iter());
    let (xmin, xmax, ymax) = all.fold((f64::MAX, 1.0f64, 0.0f64), |(a, b, c), &(x, y)| {
        (a.min(x), b.max(x), c.max(y))
    });
    let xmin = if xmin == f64::MAX { 1.0 } else { xmin.max(1.0) };
    let xmax = xmax.max(xmin * 10.0);
    let step = nice_step(ymax.max(1.0));
    let ytop = (ymax / step).ceil().max(1.0) * step;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x.ln() - xmin.ln()) / (xmax.ln() - xmin.ln()) * pw;
    let sy = |y: f64| TOP + ph - y / ytop * ph;

    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" \
         viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">\
         Throughput vs concurrent clients (median of rounds)</text>\n",
        LEFT + pw / 2.0
    );
    let mut y = 0.0;
    while y <= ytop + step / 2.0 {
        let py = sy(y);
        s.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#ddd\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            LEFT + pw,
            LEFT - 6.0,
            py + 4.0,
            y as u64
        ));
        y += step;
    }
    let mut ticks: Vec<f64> = series
        .iter()
        .flat_map(|s| s.3.iter().map(|p| p.0))
        .collect();
    ticks.sort_by(|a, b| a.total_cmp(b));
    ticks.dedup();
    for x in ticks {
        let px = sx(x);
        s.push_str(&format!(
            "<line x1=\"{px:.1}\" y1=\"{TOP}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>\n\
             <text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n",
            TOP + ph,
            TOP + ph + 16.0,
            x as u64
        ));
    }
    s.push_str(&format!(
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>\n\
         <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">concurrent clients (log scale)</text>\n\
         <text x=\"18\" y=\"{:.1}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {:.1})\">requests/s</text>\n",
        LEFT + pw / 2.0,
        H - 10.0,
        TOP + ph / 2.0,
        TOP + ph / 2.0
    ));
    for (i, (label, colour, dash, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>\n",
            path.join(" ")
        ));
        for &(x, y) in pts {
            s.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>\n",
                sx(x),
                sy(y)
            ));
        }
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + pw + 14.0;
        s.push_str(&format!(
            "<line x1=\"{lx}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>\n\
             <text x=\"{}\" y=\"{}\">{}</text>\n",
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(label)
        ));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(45_000.0), 10_000.0);
        assert_eq!(nice_step(3.0), 1.0);
    }
}
