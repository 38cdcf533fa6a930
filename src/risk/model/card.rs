//! The model card as Markdown (`models/NAME.md` next to `models/NAME.json`).

use std::fmt::Write as _;

use crate::risk::evaluate::{GroupedMetrics, Metrics, Report};
use crate::risk::model::Model;

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn row(out: &mut String, name: &str, m: &Metrics) {
    let _ = writeln!(
        out,
        "| {name} | {} | {} | {} | {} | {} | {} | {} |",
        m.failures,
        num(m.recall_at_10s, 3),
        num(m.recall_at_30s, 3),
        num(m.median_lead_s, 0),
        num(m.false_alarms_per_appliance_day, 2),
        num(m.roc_auc, 3),
        num(m.pr_auc, 3),
    );
}

fn rows(out: &mut String, who: &str, g: &GroupedMetrics) {
    row(out, &format!("{who}, all failures"), &g.all);
    row(out, &format!("{who}, with precursors"), &g.precursor);
    row(out, &format!("{who}, without precursors"), &g.sudden);
}

/// A Markdown table of a report: the model and the baseline, per group.
pub fn report_table(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Threshold {:.4}, horizon {} s, {:.2} appliance-days of up time{}.\n",
        r.threshold,
        r.horizon_s,
        r.appliance_days,
        if r.unlabelled_failures > 0 {
            format!(", {} failures of unknown kind", r.unlabelled_failures)
        } else {
            String::new()
        }
    );
    out.push_str(
        "| | failures | recall@10s | recall@30s | median lead (s) | false alarms / appliance-day | ROC AUC | PR AUC |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    rows(&mut out, "model", &r.model);
    rows(&mut out, "baseline", &r.baseline);
    lead_table(&mut out, "kind", &r.by_kind);
    lead_table(&mut out, "precursor length", &r.by_precursor_length);
    out
}

/// A table of recall and lead per group (`by` names the grouping); nothing when empty.
fn lead_table(out: &mut String, by: &str, groups: &[crate::risk::evaluate::KindMetrics]) {
    if groups.is_empty() {
        return;
    }
    let _ = write!(
        out,
        "\n| {by} (model) | failures | recall@10s | recall@30s | median lead (s) |\n|---|---|---|---|---|\n"
    );
    for k in groups {
        let _ = writeln!(
            out,
            "| {} | {} | {:.3} | {:.3} | {:.0} |",
            k.kind, k.failures, k.recall_at_10s, k.recall_at_30s, k.median_lead_s
        );
    }
}

/// The whole card.
pub fn markdown(m: &Model) -> String {
    let c = &m.card;
    let mut out = String::new();
    let _ = writeln!(out, "# Model card: {}\n", m.version);
    let _ = writeln!(
        out,
        "Predicts the probability that an appliance fails (its `down` flag goes 0 -> 1) within \
         the next **{} s**, from features over the last {} s of telemetry. Operating threshold: \
         **{:.4}** (alarm when the score is above it).\n",
        m.horizon_s, m.window_s, m.threshold
    );
    let _ = writeln!(out, "- Created: {}", c.created_at);
    let _ = writeln!(out, "- Training data: {}", c.training_data.join(", "));
    let _ = writeln!(
        out,
        "- Rows: {}; series: {}; failures: {} ({} with precursors, {} without)",
        c.rows, c.series, c.failures[0], c.failures[1], c.failures[2]
    );
    let _ = writeln!(out, "- Split: {}", c.split);
    let _ = writeln!(
        out,
        "- Fitted on {} rows ({} positive: every positive, negatives sampled)",
        c.fitted_rows, c.fitted_positives
    );
    let _ = writeln!(out, "- Threshold rule: {}", c.threshold_rule);
    let _ = writeln!(out, "- Training time: {:.1} s", c.training_seconds);
    for n in &c.notes {
        let _ = writeln!(out, "- {n}");
    }
    out.push_str("\n## Candidates (validation period)\n\n");
    out.push_str("| family | members | threshold | recall@10s (precursor) | false alarms / appliance-day | PR AUC | fit time (s) |\n|---|---|---|---|---|---|---|\n");
    for k in &c.candidates {
        let _ = writeln!(
            out,
            "| {} | {} | {:.4} | {} | {} | {} | {:.1} |",
            k.kind.name(),
            k.members,
            k.threshold,
            num(k.validation.precursor.recall_at_10s, 3),
            num(k.validation.all.false_alarms_per_appliance_day, 2),
            num(k.validation.all.pr_auc, 3),
            k.fit_seconds
        );
    }
    out.push_str("\n## Chosen model on the validation period\n\n");
    out.push_str(
        "The threshold was chosen on this period, so these numbers are optimistic; see the \
         held-out evaluation below when present.\n\n",
    );
    out.push_str(&report_table(&c.validation));
    out.push_str("\n## Features\n\n");
    out.push_str(&m.features.names().join(", "));
    out.push('\n');
    out
}
