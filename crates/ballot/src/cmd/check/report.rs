//! `report.html`: one self-contained page (no scripts, no external files) with the verdict, the
//! figures, every anomaly explained, and an SVG timeline: a lane per client worker with its
//! operations coloured by outcome, fault intervals shaded across all lanes, leader changes as
//! vertical lines. Reads the history and the judgement; writes nothing else.

use super::history::{shown, HistoryFile, Kind, OperationRecord, Outcome, FINAL_READ_WORKER};
use super::verdict::Judgement;
use ballot_sim::linearizability::Verdict;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// Operations drawn at most; a longer history shows a window around the first anomaly (or the
/// end of the run), so the page stays light enough for a browser.
const OPERATIONS_DRAWN_MAX: usize = 30_000;
const LANE_HEIGHT: f64 = 14.0;
const LABEL_WIDTH: f64 = 120.0;
const TIMELINE_WIDTH_MIN: f64 = 1400.0;
const TIMELINE_WIDTH_MAX: f64 = 24_000.0;
const PIXELS_PER_SECOND: f64 = 20.0;

const COLOR_READ: &str = "#4e79a7";
const COLOR_WRITE: &str = "#59a14f";
const COLOR_SWAPPED: &str = "#2e7d32";
const COLOR_NOT_SWAPPED: &str = "#a5d6a7";
const COLOR_FAILED: &str = "#bab0ac";
const COLOR_UNKNOWN: &str = "#e15759";
const COLOR_FAULT: &str = "#f28e2b";
const COLOR_LEADER: &str = "#7b4fa0";

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The whole page. `anomalies` are the one-line findings, empty when the run passed.
pub fn render(history: &HistoryFile, judgement: &Judgement, anomalies: &[String]) -> String {
    let meta = &history.meta;
    let mut page = String::new();
    let verdict = if anomalies.is_empty() {
        "<p class=pass>PASS: linearizable, no acknowledged write lost</p>".to_string()
    } else {
        let items: String = anomalies
            .iter()
            .map(|a| format!("<li>{}</li>", escape(a)))
            .collect();
        format!("<p class=fail>FAIL</p><ul>{items}</ul>")
    };
    let _ = write!(
        page,
        "<!doctype html><html><head><meta charset=utf-8><title>ballot check, seed {seed}</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:1.5em}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}pre{{background:#f6f6f6;\
         padding:8px;overflow:auto}}.pass{{color:#2e7d32;font-size:20px;font-weight:bold}}\
         .fail{{color:#c62828;font-size:20px;font-weight:bold}}.timeline{{overflow-x:auto;\
         border:1px solid #ddd}}.swatch{{display:inline-block;width:12px;height:10px;margin:0 4px 0 12px}}\
         </style></head><body><h1>ballot check</h1><p><code>{command}</code></p>{verdict}",
        seed = meta.seed,
        command = escape(&meta.command),
    );
    page.push_str(&figures(history, judgement));
    page.push_str(&anomaly_details(history, judgement));
    page.push_str(&legend());
    page.push_str(&timeline(history, judgement));
    page.push_str(&fault_table(history));
    page.push_str(&key_table(judgement));
    page.push_str("</body></html>\n");
    page
}

fn figures(history: &HistoryFile, judgement: &Judgement) -> String {
    let meta = &history.meta;
    let (mut ok, mut failed, mut unknown) = (0, 0, 0);
    for op in &history.operations {
        match op.outcome {
            Outcome::Failed => failed += 1,
            Outcome::Unknown => unknown += 1,
            _ => ok += 1,
        }
    }
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for fault in &history.faults {
        *by_kind.entry(&fault.kind).or_default() += 1;
    }
    let faults: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let linearizable = judgement
        .keys
        .iter()
        .filter(|k| k.verdict == Verdict::Linearizable)
        .count();
    format!(
        "<h2>Figures</h2><table>\
         <tr><th>cluster</th><td>{nodes} nodes, {groups} group(s), {clients} clients, {keys} keys at \
         a time, faults {faults_flag}{serializable}</td></tr>\
         <tr><th>duration</th><td>{duration:.0} s of faults, heal at {heal:.1} s, end at {end:.1} s</td></tr>\
         <tr><th>operations</th><td>{total}: {ok} ok, {failed} failed, {unknown} indeterminate</td></tr>\
         <tr><th>faults injected</th><td>{fault_count}: {fault_list}</td></tr>\
         <tr><th>leader changes</th><td>{leaders}</td></tr>\
         <tr><th>keys checked</th><td>{key_count}: {linearizable} linearizable</td></tr>\
         <tr><th>lost acknowledged writes</th><td>{lost}</td></tr>\
         <tr><th>incidents</th><td>{incidents}</td></tr></table>",
        nodes = meta.nodes,
        clients = meta.clients,
        keys = meta.keys,
        groups = meta.groups,
        faults_flag = escape(&meta.faults),
        serializable = if meta.serializable {
            ", <b>serializable reads</b>"
        } else {
            ""
        },
        duration = meta.duration_s,
        heal = meta.heal_ns as f64 / 1e9,
        end = meta.end_ns as f64 / 1e9,
        total = history.operations.len(),
        fault_count = history.faults.len(),
        fault_list = escape(&faults.join(", ")),
        leaders = history.leaders.len(),
        key_count = judgement.keys.len(),
        lost = judgement.lost_writes.len(),
        incidents = history.incidents.len(),
    )
}

fn anomaly_details(history: &HistoryFile, judgement: &Judgement) -> String {
    let mut html = String::new();
    for key in judgement.not_linearizable() {
        if let Verdict::NotLinearizable { explanation, .. } = &key.verdict {
            let _ = write!(
                html,
                "<h2>k{} is not linearizable</h2><pre>{}</pre>",
                key.key,
                escape(explanation)
            );
        }
    }
    for key in judgement.inconclusive() {
        let _ = write!(
            html,
            "<h2>k{} is inconclusive</h2><p>The search spent its budget ({} operations on the key).</p>",
            key.key, key.operations
        );
    }
    if !judgement.lost_writes.is_empty() {
        html.push_str("<h2>Lost acknowledged writes</h2><ul>");
        for lost in &judgement.lost_writes {
            let _ = write!(html, "<li>{}</li>", escape(&lost.describe()));
        }
        html.push_str("</ul>");
    }
    if !history.incidents.is_empty() {
        html.push_str("<h2>Incidents</h2>");
        for incident in &history.incidents {
            let _ = write!(
                html,
                "<p>{:.1} s, {}:</p><pre>{}</pre>",
                incident.time_ns as f64 / 1e9,
                escape(&incident.node),
                escape(&incident.description)
            );
        }
    }
    html
}

fn legend() -> String {
    let entries = [
        (COLOR_READ, "read ok"),
        (COLOR_WRITE, "write ok"),
        (COLOR_SWAPPED, "cas swapped"),
        (COLOR_NOT_SWAPPED, "cas not swapped"),
        (COLOR_FAILED, "failed (not applied)"),
        (COLOR_UNKNOWN, "indeterminate (until the client gave up)"),
        (COLOR_FAULT, "fault in force"),
        (COLOR_LEADER, "leader change"),
    ];
    let mut html = String::from("<h2>Timeline</h2><p>");
    for (color, label) in entries {
        let _ = write!(
            html,
            "<span class=swatch style=\"background:{color}\"></span>{label}"
        );
    }
    html.push_str(
        ". Operations on the first key found not linearizable are outlined in black. Hover for details.</p>",
    );
    html
}

fn color(op: &OperationRecord) -> &'static str {
    match op.outcome {
        Outcome::Read { .. } => COLOR_READ,
        Outcome::Written => COLOR_WRITE,
        Outcome::Swapped => COLOR_SWAPPED,
        Outcome::NotSwapped => COLOR_NOT_SWAPPED,
        Outcome::Failed => COLOR_FAILED,
        Outcome::Unknown => COLOR_UNKNOWN,
    }
}

/// The operations to draw: all of them, or a window of [`OPERATIONS_DRAWN_MAX`] around the
/// first operation of the `highlighted` key (else the end of the run).
fn drawn_operations(
    history: &HistoryFile,
    highlighted: Option<u64>,
) -> (Vec<&OperationRecord>, Option<String>) {
    let all: Vec<&OperationRecord> = history.operations.iter().collect();
    if all.len() <= OPERATIONS_DRAWN_MAX {
        return (all, None);
    }
    let focus = all
        .iter()
        .position(|op| Some(op.key) == highlighted)
        .unwrap_or(all.len() - 1);
    let start = focus
        .saturating_sub(OPERATIONS_DRAWN_MAX / 2)
        .min(all.len() - OPERATIONS_DRAWN_MAX);
    let window: Vec<&OperationRecord> = all[start..start + OPERATIONS_DRAWN_MAX].to_vec();
    let note = format!(
        "Showing {} of {} operations, from {:.1} s to {:.1} s (all of them are in history.json).",
        window.len(),
        all.len(),
        window[0].invoke_ns as f64 / 1e9,
        window[window.len() - 1].invoke_ns as f64 / 1e9
    );
    (window, Some(note))
}

fn timeline(history: &HistoryFile, judgement: &Judgement) -> String {
    // The first key found not linearizable: the one whose explanation comes first.
    let highlighted = judgement.not_linearizable().map(|k| k.key).next();
    let (operations, note) = drawn_operations(history, highlighted);
    let end_ns = history
        .operations
        .iter()
        .map(|op| op.end_ns())
        .chain([history.meta.end_ns])
        .max()
        .unwrap_or(1)
        .max(1);
    let width =
        (end_ns as f64 / 1e9 * PIXELS_PER_SECOND).clamp(TIMELINE_WIDTH_MIN, TIMELINE_WIDTH_MAX);
    let x = |time_ns: u64| LABEL_WIDTH + time_ns as f64 / end_ns as f64 * width;
    let lanes: BTreeSet<(usize, String)> = history
        .operations
        .iter()
        .map(|op| (op.worker, op.node.clone()))
        .map(|(worker, node)| {
            if worker == FINAL_READ_WORKER {
                (worker, "final read".to_string())
            } else {
                (worker, node)
            }
        })
        .collect();
    let lane_of: BTreeMap<usize, usize> = lanes
        .iter()
        .enumerate()
        .map(|(index, (worker, _))| (*worker, index))
        .collect();
    let axis_y = 16.0;
    let faults_y = 24.0;
    let leaders_y = faults_y + 2.0 * LANE_HEIGHT + 4.0;
    let lanes_y = leaders_y + 2.0 * LANE_HEIGHT + 6.0;
    let height = lanes_y + lane_of.len() as f64 * LANE_HEIGHT + 10.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<div class=timeline><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0}\" height=\"{height:.0}\" font-size=\"10\">",
        LABEL_WIDTH + width + 20.0
    );
    // Time axis: a tick every 1, 5, 10, 30 or 60 s, whichever keeps ticks 60 px apart or more.
    let seconds = end_ns as f64 / 1e9;
    let step = [1.0, 5.0, 10.0, 30.0, 60.0, 300.0]
        .into_iter()
        .find(|step| step * width / seconds >= 60.0)
        .unwrap_or(600.0);
    let mut tick = 0.0;
    while tick <= seconds {
        let tx = x((tick * 1e9) as u64);
        let _ = write!(
            svg,
            "<line x1=\"{tx:.1}\" x2=\"{tx:.1}\" y1=\"{axis_y}\" y2=\"{height:.0}\" stroke=\"#eee\"/>\
             <text x=\"{tx:.1}\" y=\"12\" text-anchor=\"middle\">{tick:.0}s</text>"
        );
        tick += step;
    }
    for fault in &history.faults {
        let start = x(fault.start_ns);
        let end = x(fault.end_ns.unwrap_or(fault.start_ns)).max(start + 2.0);
        let title = escape(&format!(
            "{} {:.1}s-{}: {}{}{}",
            fault.kind,
            fault.start_ns as f64 / 1e9,
            fault
                .end_ns
                .map_or("?".to_string(), |e| format!("{:.1}s", e as f64 / 1e9)),
            fault.description,
            fault
                .healed
                .as_ref()
                .map_or(String::new(), |h| format!("; healed: {h}")),
            fault
                .error
                .as_ref()
                .map_or(String::new(), |e| format!("; error: {e}")),
        ));
        let _ = write!(
            svg,
            "<rect x=\"{start:.1}\" y=\"{lanes_y:.0}\" width=\"{:.1}\" height=\"{:.0}\" fill=\"{COLOR_FAULT}\" opacity=\"0.12\"/>\
             <g><title>{title}</title><rect x=\"{start:.1}\" y=\"{faults_y:.0}\" width=\"{:.1}\" height=\"{:.0}\" fill=\"{COLOR_FAULT}\" opacity=\"0.8\"/>\
             <text x=\"{:.1}\" y=\"{:.0}\">{} {}</text></g>",
            end - start,
            height - lanes_y,
            end - start,
            LANE_HEIGHT - 2.0,
            start + 2.0,
            faults_y + 2.0 * LANE_HEIGHT - 2.0,
            escape(&fault.kind),
            escape(&fault.targets.join(","))
        );
    }
    for leader in &history.leaders {
        let lx = x(leader.time_ns);
        let _ = write!(
            svg,
            "<g><title>{:.2}s: {} leads term {}</title><line x1=\"{lx:.1}\" x2=\"{lx:.1}\" y1=\"{leaders_y:.0}\" y2=\"{height:.0}\" stroke=\"{COLOR_LEADER}\" stroke-dasharray=\"3,3\"/>\
             <text x=\"{:.1}\" y=\"{:.0}\" fill=\"{COLOR_LEADER}\">{} t{}</text></g>",
            leader.time_ns as f64 / 1e9,
            escape(&leader.leader),
            leader.term,
            lx + 2.0,
            leaders_y + LANE_HEIGHT,
            escape(&leader.leader),
            leader.term
        );
    }
    let heal = x(history.meta.heal_ns);
    let _ = write!(
        svg,
        "<line x1=\"{heal:.1}\" x2=\"{heal:.1}\" y1=\"{axis_y}\" y2=\"{height:.0}\" stroke=\"black\"/>\
         <text x=\"{:.1}\" y=\"{:.0}\">heal</text>\
         <text x=\"4\" y=\"{:.0}\">faults</text><text x=\"4\" y=\"{:.0}\">leader</text>",
        heal + 2.0,
        leaders_y + 2.0 * LANE_HEIGHT,
        faults_y + LANE_HEIGHT,
        leaders_y + LANE_HEIGHT
    );
    for (index, (worker, node)) in lanes.iter().enumerate() {
        let label = if *worker == FINAL_READ_WORKER {
            node.clone()
        } else {
            format!("w{worker} on {node}")
        };
        let _ = write!(
            svg,
            "<text x=\"4\" y=\"{:.0}\">{}</text>",
            lanes_y + (index as f64 + 0.8) * LANE_HEIGHT,
            escape(&label)
        );
    }
    for op in operations {
        let lane = lane_of[&op.worker];
        let start = x(op.invoke_ns);
        let end = x(op.end_ns()).max(start + 1.0);
        let outline = if Some(op.key) == highlighted {
            " stroke=\"black\" stroke-width=\"0.8\""
        } else {
            ""
        };
        let _ = write!(
            svg,
            "<rect x=\"{start:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.0}\" fill=\"{}\"{outline}><title>{}</title></rect>",
            lanes_y + lane as f64 * LANE_HEIGHT + 1.0,
            end - start,
            LANE_HEIGHT - 3.0,
            color(op),
            escape(&op_title(op))
        );
    }
    svg.push_str("</svg></div>");
    if let Some(note) = note {
        let _ = write!(svg, "<p>{}</p>", escape(&note));
    }
    svg
}

fn op_title(op: &OperationRecord) -> String {
    let mut title = op.describe();
    if let Kind::Cas { expected, .. } = op.kind {
        title.push_str(&format!(" (expected {})", shown(expected)));
    }
    if let Some(error) = &op.error {
        title.push_str(&format!(": {error}"));
    }
    title
}

fn fault_table(history: &HistoryFile) -> String {
    let mut html = String::from(
        "<h2>Faults</h2><table><tr><th>start</th><th>end</th><th>kind</th><th>what</th><th>healed</th><th>error</th></tr>",
    );
    for fault in &history.faults {
        let _ = write!(
            html,
            "<tr><td>{:.1} s</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            fault.start_ns as f64 / 1e9,
            fault
                .end_ns
                .map_or(String::new(), |e| format!("{:.1} s", e as f64 / 1e9)),
            escape(&fault.kind),
            escape(&fault.description),
            escape(fault.healed.as_deref().unwrap_or("")),
            escape(fault.error.as_deref().unwrap_or(""))
        );
    }
    html.push_str("</table><h2>Leader changes</h2><p>");
    let leaders: Vec<String> = history
        .leaders
        .iter()
        .map(|l| {
            format!(
                "{:.1} s: {} (term {})",
                l.time_ns as f64 / 1e9,
                l.leader,
                l.term
            )
        })
        .collect();
    html.push_str(&escape(&leaders.join("; ")));
    html.push_str("</p>");
    html
}

fn key_table(judgement: &Judgement) -> String {
    let mut html = String::from(
        "<h2>Verdict per key</h2><table><tr><th>key</th><th>operations</th><th>verdict</th></tr>",
    );
    for key in &judgement.keys {
        let verdict = match &key.verdict {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::NotLinearizable { .. } => "<b>not linearizable</b>".to_string(),
            Verdict::Inconclusive { explored, .. } => {
                format!("<b>inconclusive</b> ({explored} configurations explored)")
            }
        };
        let _ = write!(
            html,
            "<tr><td>k{}</td><td>{}</td><td>{verdict}</td></tr>",
            key.key, key.operations
        );
    }
    html.push_str("</table>");
    html
}

#[cfg(test)]
mod tests {
    use super::super::history::{FaultRecord, LeaderRecord, Meta};
    use super::super::verdict::KeyVerdict;
    use super::*;

    #[test]
    fn the_page_draws_lanes_faults_leaders_and_escapes_text() {
        let operation = |id: u64, worker: usize, outcome: Outcome| OperationRecord {
            id,
            worker,
            client: id,
            node: "n1".into(),
            key: 0,
            kind: Kind::Write { value: id },
            invoke_ns: id * 1_000_000,
            complete_ns: (outcome != Outcome::Unknown).then_some(id * 1_000_000 + 500),
            abandoned_ns: (outcome == Outcome::Unknown).then_some(id * 1_000_000 + 900),
            outcome,
            error: Some("<no answer>".into()),
        };
        let history = HistoryFile {
            meta: Meta {
                command: "ballot check --seed 1".into(),
                seed: 1,
                nodes: 3,
                clients: 2,
                keys: 1,
                groups: 1,
                duration_s: 5.0,
                faults: "all".into(),
                serializable: false,
                heal_ns: 5_000_000_000,
                end_ns: 6_000_000_000,
            },
            operations: vec![
                operation(1, 0, Outcome::Written),
                operation(2, 1, Outcome::Unknown),
            ],
            faults: vec![FaultRecord {
                kind: "partition".into(),
                targets: vec!["n2".into()],
                description: "n2 cut off from n1, n3".into(),
                start_ns: 1_000_000_000,
                end_ns: Some(3_000_000_000),
                healed: Some("links restored".into()),
                error: None,
            }],
            leaders: vec![LeaderRecord {
                time_ns: 10,
                term: 1,
                leader: "n1".into(),
            }],
            incidents: Vec::new(),
        };
        let judgement = Judgement {
            keys: vec![KeyVerdict {
                key: 0,
                operations: 2,
                verdict: Verdict::NotLinearizable {
                    key: 0,
                    explanation: "a < b".into(),
                },
            }],
            lost_writes: Vec::new(),
        };
        let page = render(
            &history,
            &judgement,
            &["not linearizable: 1 keys (k0)".into()],
        );
        assert!(
            page.contains("w0 on n1") && page.contains("w1 on n1"),
            "a lane per worker"
        );
        assert!(page.contains("n2 cut off from n1, n3"), "the fault");
        assert!(page.contains(">n1 t1<"), "the leader change");
        assert!(page.contains(COLOR_UNKNOWN) && page.contains(COLOR_WRITE));
        assert!(
            page.contains("a &lt; b") && !page.contains("<no answer>"),
            "escaped"
        );
        assert!(
            page.contains("stroke=\"black\""),
            "the failing key's operations outlined"
        );
        assert!(page.contains("class=fail"));
    }
}
