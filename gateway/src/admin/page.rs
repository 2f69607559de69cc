//! The status page for shop staff: one server-rendered HTML page, no script
//! and no build step, refreshed by the browser every few seconds. Every value
//! from outside (account names, errors) goes through maud's escaping.

use std::time::{Duration, UNIX_EPOCH};

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::status::StatusReport;
use crate::sinks::speaker::SpeakerState;

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{padding:14px 20px;color:#fff}
header.ok{background:#1f7a3f} header.bad{background:#b3261e} header.warn{background:#9a6700}
header h1{margin:0;font-size:1.3em} header p{margin:4px 0 0}
main{padding:8px 20px 24px;display:grid;gap:16px;max-width:1100px}
section{background:#fff;border-radius:8px;padding:12px 16px;box-shadow:0 1px 2px #0002}
h2{font-size:1.05em;margin:4px 0 10px}
table{border-collapse:collapse;width:100%;font-size:.93em}
td,th{text-align:left;padding:5px 8px;border-bottom:1px solid #e4e6ea;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.tag{display:inline-block;padding:1px 8px;border-radius:10px;font-size:.85em;background:#e4e6ea}
.good{background:#d6f0dd;color:#175c2f} .warn{background:#fcefc7;color:#6b4e00} .fail{background:#f9d7d4;color:#8a1c14}
.muted{color:#687081} ul{margin:6px 0 0 18px;padding:0}
"#;

/// Amounts as a cashier reads them: `150.000 ₫`.
pub fn vnd(amount: u64) -> String {
    let digits = amount.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(c);
    }
    out + " ₫"
}

/// Unix ms as Vietnam's wall clock (UTC+7, no daylight saving).
fn local_time(ms: i64) -> String {
    let shifted = UNIX_EPOCH + Duration::from_millis((ms + 7 * 3_600_000).max(0) as u64);
    humantime::format_rfc3339_seconds(shifted)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

/// `announced` and friends, coloured.
fn state_tag(state: &str) -> Markup {
    let (class, text) = match state {
        "delivered" | "played" => ("good", "announced"),
        "sent" => ("good", "sent to speaker"),
        "pending" | "requeued" => ("warn", "waiting"),
        "expired" => ("warn", "too old, not announced"),
        "unconfirmed" => ("warn", "sent, not confirmed"),
        "dead" | "failed" | "refused" => ("fail", "not announced"),
        other => ("", other),
    };
    html! { span class={"tag " (class)} { (text) } }
}

/// Red when not ready, amber when something needs an eye, else green.
fn banner_class(report: &StatusReport) -> &'static str {
    match (report.ready, report.warnings.is_empty()) {
        (false, _) => "bad",
        (true, false) => "warn",
        (true, true) => "ok",
    }
}

/// A speaker's state as `pair/check` last said it.
fn speaker_tag(s: &SpeakerState) -> Markup {
    let (class, text) = match (s.trouble(), s.online) {
        (Some(trouble), _) => ("fail", trouble),
        (None, Some(true)) => ("good", "online"),
        _ => ("", "not checked yet"),
    };
    html! {
        span class={"tag " (class)} { (text) }
        @if let Some(error) = &s.last_error { br; span class="muted" { (error) } }
    }
}

pub fn render(report: &StatusReport) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content="5";
                title { "Soundbox gateway · " (report.gateway) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header class=(banner_class(report)) {
                    h1 { "Soundbox gateway " (report.gateway) }
                    @if !report.ready {
                        p { "Needs attention:" }
                        ul {
                            @for problem in &report.problems { li { (problem) } }
                            @for warning in &report.warnings { li { (warning) } }
                        }
                    } @else if !report.warnings.is_empty() {
                        ul { @for warning in &report.warnings { li { (warning) } } }
                    } @else {
                        p { "Everything works. Payments are announced as they arrive." }
                    }
                }
                main {
                    section id="payments" {
                        h2 { "Recent payments to the speakers" }
                        @if report.recent.is_empty() {
                            p class="muted" { "No payments yet." }
                        } @else {
                            table {
                                tr { th { "Time (ICT)" } th { "Amount" } th { "Account" } th { "From" } th { "Announced?" } }
                                @for item in &report.recent {
                                    tr {
                                        td { (local_time(item.appended_at_ms)) }
                                        td class="num" { (vnd(item.amount)) }
                                        td { (item.account) }
                                        td { (item.provider) }
                                        td {
                                            (state_tag(&item.state))
                                            @if let Some(reason) = &item.reason { " " span class="muted" { (reason) } }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    section id="speakers" {
                        h2 { "Speakers" }
                        @if report.speakers.is_empty() {
                            p class="muted" { "No speaker is routed in config.toml." }
                        }
                        table {
                            @if !report.speakers.is_empty() {
                                tr { th { "Speaker" } th { "State" } th class="num" { "Waiting" } th { "Last result" } th { "Last announcement" } th { } }
                            }
                            @for s in &report.speakers {
                                tr {
                                    td { (s.health.hardware_id) @if let Some(model) = &s.health.model { br; span class="muted" { (model) } } }
                                    td { (speaker_tag(&s.health)) }
                                    td class="num" {
                                        (s.waiting)
                                        @if let Some(age) = s.oldest_waiting_age_ms { br; span class="muted" { "oldest " (age / 1000) " s" } }
                                    }
                                    @match &s.last {
                                        Some(a) => {
                                            td { (state_tag(&a.result)) }
                                            td { "last: " (vnd(a.amount)) " “" (a.words) "”" }
                                            td class="muted" { (a.detail.clone().unwrap_or_default()) }
                                        }
                                        None => { td colspan="3" class="muted" { "nothing announced since the gateway started" } }
                                    }
                                }
                            }
                        }
                    }
                    section id="connectors" {
                        h2 { "Banks and e-wallets" }
                        table {
                            tr { th { "Connector" } th { "Kind" } th { "State" } th class="num" { "Calls" } th { "Last problem" } }
                            @for c in &report.connectors {
                                tr {
                                    td {
                                        (c.name) br;
                                        span class="muted" { (c.plugin) @if let Some(v) = &c.version { " · " (v) } } br;
                                        span class="muted" { (c.signature) }
                                        @if let Some(on_disk) = &c.on_disk {
                                            br; span class="tag warn" { "newer file refused: " (on_disk) }
                                        }
                                    }
                                    td { (c.kind) }
                                    td {
                                        @if c.health.consecutive_failures > 0 {
                                            span class="tag fail" { "failing (" (c.health.consecutive_failures) " in a row)" }
                                        } @else if c.health.calls == 0 {
                                            span class="tag" { "waiting" }
                                        } @else {
                                            span class="tag good" { "ok" }
                                        }
                                    }
                                    td class="num" { (c.health.calls) }
                                    td class="muted" { (c.health.last_failure.clone().unwrap_or_default()) }
                                }
                            }
                        }
                    }
                    @if !report.subscriptions.is_empty() {
                        section id="subscriptions" {
                            h2 { "Subscriptions" }
                            table {
                                tr { th { "Connector" } th { "Broker and topic" } th { "State" } th class="num" { "Stored" } th class="num" { "Dropped" } th { "Last problem" } }
                                @for s in &report.subscriptions {
                                    tr {
                                        td { (s.connector) }
                                        td { (s.broker) br; span class="muted" { (s.topic) } }
                                        td {
                                            @if s.connected {
                                                span class="tag good" { "subscribed" }
                                            } @else {
                                                span class="tag fail" { "not connected" }
                                            }
                                        }
                                        td class="num" { (s.stored) }
                                        td class="num" { (s.dropped) }
                                        td class="muted" { (s.last_error.clone().unwrap_or_default()) }
                                    }
                                }
                            }
                        }
                    }
                    section id="queues" {
                        h2 { "Delivery queues" }
                        table {
                            tr { th { "Destination" } th class="num" { "Waiting" } th class="num" { "Oldest waiting" } th class="num" { "Failed for good" } th { "State" } }
                            @for s in &report.sinks {
                                tr {
                                    td { (s.queue.sink) }
                                    td class="num" { (s.queue.pending) }
                                    td class="num" { @if let Some(age) = s.queue.oldest_pending_age_ms { (age / 1000) " s" } @else { "–" } }
                                    td class="num" { (s.queue.dead_letters) }
                                    td {
                                        @if s.failing_since_ms.is_some() {
                                            span class="tag fail" { "retrying" }
                                            " " span class="muted" { (s.last_error.clone().unwrap_or_default()) }
                                        } @else {
                                            span class="tag good" { "ok" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    p class="muted" { "Version " (report.version) " · up " (report.uptime_secs) " s · " a href="/api/status" { "JSON" } " · " a href="/metrics" { "metrics" } }
                }
            }
        }
    };
    page.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_like_a_till() {
        assert_eq!(vnd(0), "0 ₫");
        assert_eq!(vnd(999), "999 ₫");
        assert_eq!(vnd(150_000), "150.000 ₫");
        assert_eq!(vnd(2_277_000), "2.277.000 ₫");
    }

    #[test]
    fn times_are_vietnam_wall_clock() {
        // 2024-01-01T00:00:00Z is 07:00 in Hanoi.
        assert_eq!(local_time(1_704_067_200_000), "2024-01-01 07:00:00");
    }
}
