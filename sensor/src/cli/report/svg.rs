//! The report's timeline picture: an inline SVG (no script, nothing
//! fetched), one lane per run nested by depth, a tick per exec and connect
//! over time, denials, escape attempts and detections marked by colour and
//! by shape, each mark with a `<title>` that shows its event.
//!
//! A lane with more ticks than [`TICK_LIMIT`] (or marks than
//! [`MARK_LIMIT`]) is drawn in [`BUCKETS`] time buckets instead: one bar per
//! bucket, its height by the count, its title the count. So the picture
//! has at most a few thousand elements whatever the run's size.

use maud::{Markup, html};

use super::super::query::{Denial, describe, time_of_ns};
use crate::store::query::StoredEvent;

/// Exec and connect ticks drawn one by one in a lane, at most.
pub(super) const TICK_LIMIT: usize = 400;
/// Denial, escape and detection marks drawn one by one in a lane, at most.
pub(super) const MARK_LIMIT: usize = 200;
/// Time buckets of a lane drawn in aggregate.
pub(super) const BUCKETS: usize = 200;
/// Lanes drawn at most (the rest are counted under the picture).
pub(super) const LANE_LIMIT: usize = 60;

const WIDTH: f64 = 1100.0;
const LABEL: f64 = 210.0;
const RIGHT: f64 = 12.0;
const LANE: f64 = 30.0;
const TOP: f64 = 22.0;

/// What a mark stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MarkKind {
    Exec,
    Connect,
    Denial(Denial),
    Escape,
    Detection,
}

impl MarkKind {
    const fn tick(self) -> bool {
        matches!(self, Self::Exec | Self::Connect)
    }

    const fn name(self, n: usize) -> &'static str {
        match (self, n == 1) {
            (Self::Exec, true) => "exec",
            (Self::Exec, false) => "execs",
            (Self::Connect, true) => "connect",
            (Self::Connect, false) => "connects",
            (Self::Denial(Denial::Blocked), true) => "denial, blocked",
            (Self::Denial(Denial::Blocked), false) => "denials, blocked",
            (Self::Denial(Denial::Audit), true) => "denial, would have been blocked (audit)",
            (Self::Denial(Denial::Audit), false) => "denials, would have been blocked (audit)",
            (Self::Escape, true) => "escape attempt",
            (Self::Escape, false) => "escape attempts",
            (Self::Detection, true) => "detection",
            (Self::Detection, false) => "detections",
        }
    }
}

/// One event on a lane.
pub(super) struct Mark<'a> {
    pub kind: MarkKind,
    pub ns: i64,
    pub event: &'a StoredEvent,
    /// Its row is in the page's table (the mark links to it).
    pub linked: bool,
}

/// One run's lane.
pub(super) struct Lane<'a> {
    pub label: String,
    /// The run's whole id, in the lane's title.
    pub id: String,
    pub depth: u32,
    pub start_ns: i64,
    pub end_ns: i64,
    pub marks: Vec<Mark<'a>>,
}

/// x of a time.
struct Scale {
    t0: i64,
    span: f64,
}

impl Scale {
    #[expect(clippy::cast_precision_loss, reason = "pixels")]
    fn x(&self, ns: i64) -> f64 {
        let f = (ns.saturating_sub(self.t0)) as f64 / self.span;
        LABEL + f.clamp(0.0, 1.0) * (WIDTH - LABEL - RIGHT)
    }

    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "a bucket index, clamped"
    )]
    fn bucket(&self, ns: i64) -> usize {
        let f = (ns.saturating_sub(self.t0)) as f64 / self.span;
        ((f * BUCKETS as f64) as usize).min(BUCKETS - 1)
    }

    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_precision_loss,
        reason = "a time within the span"
    )]
    fn bucket_ns(&self, b: usize) -> i64 {
        self.t0
            .saturating_add((self.span * b as f64 / BUCKETS as f64) as i64)
    }
}

fn r1(v: f64) -> String {
    format!("{v:.1}")
}

/// The shape of a mark centred at (x, y): a denial blocked is a filled red
/// triangle, one only reported (audit) a hollow orange diamond, an escape
/// attempt a purple square, a detection a dark cross.
fn shape(kind: MarkKind, x: f64, y: f64, title: &str) -> Markup {
    let (xs, ys) = (r1(x), r1(y));
    html! {
        @match kind {
            MarkKind::Denial(Denial::Blocked) => polygon.blocked
                points={ (r1(x - 5.0)) "," (r1(y - 5.0)) " " (r1(x + 5.0)) "," (r1(y - 5.0)) " " (xs) "," (r1(y + 5.0)) }
                { title { (title) } }
            MarkKind::Denial(Denial::Audit) => polygon.audit
                points={ (xs) "," (r1(y - 5.5)) " " (r1(x + 5.0)) "," (ys) " " (xs) "," (r1(y + 5.5)) " " (r1(x - 5.0)) "," (ys) }
                { title { (title) } }
            MarkKind::Escape => rect.escape x=(r1(x - 4.0)) y=(r1(y - 4.0)) width="8" height="8"
                { title { (title) } }
            MarkKind::Detection => path.detection
                d={ "M" (r1(x - 4.5)) " " (r1(y - 4.5)) "L" (r1(x + 4.5)) " " (r1(y + 4.5))
                    "M" (r1(x - 4.5)) " " (r1(y + 4.5)) "L" (r1(x + 4.5)) " " (r1(y - 4.5)) }
                { title { (title) } }
            MarkKind::Exec | MarkKind::Connect => {}
        }
    }
}

fn linked(mark: &Mark<'_>, inner: &Markup) -> Markup {
    html! {
        @if mark.linked {
            a href={ "#e" (mark.event.id) } { (inner) }
        } @else {
            (inner)
        }
    }
}

fn event_title(mark: &Mark<'_>) -> String {
    let e = &mark.event.event;
    let what = match mark.kind {
        MarkKind::Denial(d) => format!("DENIED, {}: ", d.text()),
        MarkKind::Escape => "escape attempt: ".to_owned(),
        MarkKind::Detection => "detection: ".to_owned(),
        _ => String::new(),
    };
    let (desc, _) = super::super::fold::cut(&describe(e), 300);
    format!(
        "{} {what}{desc}",
        super::shown(e["time"].as_str().unwrap_or(""))
    )
}

/// The y of a kind's row within a lane (top of the lane at 0).
const fn row_y(kind: MarkKind) -> f64 {
    match kind {
        MarkKind::Exec => 4.0,
        MarkKind::Connect => 15.0,
        _ => 15.0,
    }
}

fn lane_html(lane: &Lane<'_>, y: f64, scale: &Scale) -> Markup {
    let ticks: Vec<&Mark<'_>> = lane.marks.iter().filter(|m| m.kind.tick()).collect();
    let marks: Vec<&Mark<'_>> = lane.marks.iter().filter(|m| !m.kind.tick()).collect();
    let indent = f64::from(lane.depth.min(8)) * 12.0;
    let (x_start, x_end) = (scale.x(lane.start_ns), scale.x(lane.end_ns));
    html! {
        g.lane {
            text x=(r1(6.0 + indent)) y=(r1(y + 18.0)) {
                @if lane.depth > 0 { "└ " } (lane.label)
            }
            rect.span x=(r1(x_start)) y=(r1(y + 2.0)) width=(r1((x_end - x_start).max(1.0))) height=(r1(LANE - 4.0)) {
                title { (lane.label) " (run " (lane.id) "): " (time_of_ns(lane.start_ns)) " – " (time_of_ns(lane.end_ns)) }
            }
            @if ticks.len() <= TICK_LIMIT {
                @for m in &ticks {
                    @let x = r1(scale.x(m.ns));
                    @let top = y + row_y(m.kind);
                    (linked(m, &html! {
                        line class=(if m.kind == MarkKind::Exec { "exec" } else { "connect" })
                            x1=(x) x2=(x) y1=(r1(top)) y2=(r1(top + 10.0)) { title { (event_title(m)) } }
                    }))
                }
            } @else {
                (buckets_html(&ticks, y, scale))
            }
            @if marks.len() <= MARK_LIMIT {
                @for m in &marks {
                    (linked(m, &shape(m.kind, scale.x(m.ns), y + 20.0, &event_title(m))))
                }
            } @else {
                (mark_buckets_html(&marks, y, scale))
            }
        }
    }
}

/// Ticks in buckets: per kind, one bar per bucket that has any, its height
/// by the count (log scale), its title the count and the bucket's times.
fn buckets_html(ticks: &[&Mark<'_>], y: f64, scale: &Scale) -> Markup {
    let mut counts = [[0_usize; BUCKETS]; 2];
    for m in ticks {
        let row = usize::from(m.kind == MarkKind::Connect);
        counts[row][scale.bucket(m.ns)] += 1;
    }
    let width = (WIDTH - LABEL - RIGHT) / f64::from(u32::try_from(BUCKETS).unwrap_or(200));
    let most = counts.iter().flatten().copied().max().unwrap_or(1).max(1);
    #[expect(clippy::cast_precision_loss, reason = "a bar's height")]
    let height = |n: usize| 2.0 + 8.0 * ((n as f64 + 1.0).ln() / (most as f64 + 1.0).ln());
    html! {
        @for (row, kind) in [(0, MarkKind::Exec), (1, MarkKind::Connect)] {
            @for (b, &n) in counts[row].iter().enumerate() {
                @if n > 0 {
                    @let h = height(n);
                    @let top = y + row_y(kind) + 10.0 - h;
                    rect class=(if row == 0 { "exec" } else { "connect" })
                        x=(r1(scale.x(scale.bucket_ns(b)))) y=(r1(top)) width=(r1(width.max(1.0))) height=(r1(h)) {
                        title {
                            (n) " " (kind.name(n)) ", " (time_of_ns(scale.bucket_ns(b))) " – " (time_of_ns(scale.bucket_ns(b + 1)))
                        }
                    }
                }
            }
        }
    }
}

/// Marks in buckets: one shape per kind and bucket, its title the count.
fn mark_buckets_html(marks: &[&Mark<'_>], y: f64, scale: &Scale) -> Markup {
    let mut cells: std::collections::BTreeMap<(usize, u8), (MarkKind, usize)> =
        std::collections::BTreeMap::new();
    for m in marks {
        let order = match m.kind {
            MarkKind::Denial(Denial::Blocked) => 0,
            MarkKind::Denial(Denial::Audit) => 1,
            MarkKind::Escape => 2,
            _ => 3,
        };
        cells
            .entry((scale.bucket(m.ns), order))
            .or_insert((m.kind, 0))
            .1 += 1;
    }
    html! {
        @for ((b, _), (kind, n)) in &cells {
            @let from = scale.bucket_ns(*b);
            (shape(*kind, scale.x(from), y + 20.0,
                &format!("{n} {}, {} – {}", kind.name(*n), time_of_ns(from), time_of_ns(scale.bucket_ns(b + 1)))))
        }
    }
}

/// The picture of `lanes` (parents before children, in tree order) between
/// `t0` and `t1`.
pub(super) fn timeline(lanes: &[Lane<'_>], t0: i64, t1: i64) -> Markup {
    let drawn = &lanes[..lanes.len().min(LANE_LIMIT)];
    #[expect(clippy::cast_precision_loss, reason = "a time span in pixels")]
    let scale = Scale {
        t0,
        span: (t1.saturating_sub(t0)).max(1) as f64,
    };
    let count = u32::try_from(drawn.len()).unwrap_or(u32::MAX);
    let height = TOP + f64::from(count) * LANE + 6.0;
    // The axis's times: to the second, or the millisecond for a short span.
    let clock = if t1.saturating_sub(t0) < 60_000_000_000 {
        23
    } else {
        19
    };
    let axis: Vec<i64> = (0..=5)
        .map(|i| t0 + (t1.saturating_sub(t0)) / 5 * i)
        .collect();
    html! {
        svg.timeline role="img"
            viewBox={ "0 0 " (WIDTH) " " (r1(height)) } width=(WIDTH) height=(r1(height)) {
            title { "Timeline: one lane per run, a tick per exec (top) and connect (bottom)" }
            @for (i, t) in axis.iter().enumerate() {
                @let x = r1(scale.x(*t));
                line.axis x1=(x) x2=(x) y1="14" y2=(r1(height)) {}
                // The last time ends at its line: it would run off the picture.
                text.axis x=(x) y="11" text-anchor=[(i + 1 == axis.len()).then_some("end")] {
                    (time_of_ns(*t).get(11..clock).unwrap_or(""))
                }
            }
            @for (i, lane) in drawn.iter().enumerate() {
                (lane_html(lane, TOP + f64::from(u32::try_from(i).unwrap_or(0)) * LANE, &scale))
            }
        }
        @if lanes.len() > drawn.len() {
            p.note { (lanes.len() - drawn.len()) " more runs are not drawn (the picture shows the first " (LANE_LIMIT) ")." }
        }
        p.legend {
            svg width="720" height="16" viewBox="0 0 720 16" {
                line.exec x1="4" x2="4" y1="2" y2="14" {}
                text x="10" y="12" { "exec" }
                line.connect x1="52" x2="52" y1="2" y2="14" {}
                text x="58" y="12" { "connect" }
                (shape(MarkKind::Denial(Denial::Blocked), 124.0, 8.0, "denial, blocked"))
                text x="133" y="12" { "denied, blocked" }
                (shape(MarkKind::Denial(Denial::Audit), 240.0, 8.0, "denial, would have been blocked (audit)"))
                text x="249" y="12" { "denied, would have been blocked (audit)" }
                // The audit label is about 240 pixels long: the next
                // item starts clear of it.
                (shape(MarkKind::Escape, 510.0, 8.0, "escape attempt"))
                text x="519" y="12" { "escape attempt" }
                (shape(MarkKind::Detection, 625.0, 8.0, "detection"))
                text x="634" y="12" { "detection" }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: i64) -> StoredEvent {
        StoredEvent {
            id,
            escape: false,
            event: serde_json::json!({"kind":"process.exec","time":"t","process":{"pid":1,"argv":["x"]}}),
        }
    }

    fn elements(svg: &str) -> usize {
        ["<line", "<rect", "<polygon", "<path"]
            .iter()
            .map(|t| svg.matches(t).count())
            .sum()
    }

    #[test]
    fn few_events_are_ticks_many_are_buckets() {
        let events: Vec<StoredEvent> = (0..100_000).map(stored).collect();
        let hour = 3_600_000_000_000_i64;
        let lane = |n: usize, denials: usize| Lane {
            label: "bot".into(),
            id: "019aeb3c-0000-7000-8000-000000000001".into(),
            depth: 0,
            start_ns: 0,
            end_ns: 12 * hour,
            marks: events
                .iter()
                .take(n)
                .enumerate()
                .map(|(i, e)| Mark {
                    kind: if i < denials {
                        MarkKind::Denial(Denial::Blocked)
                    } else if i % 2 == 0 {
                        MarkKind::Exec
                    } else {
                        MarkKind::Connect
                    },
                    ns: i64::try_from(i).unwrap() * (12 * hour / 100_000),
                    event: e,
                    linked: i < 10,
                })
                .collect(),
        };
        let small = timeline(&[lane(20, 2)], 0, 12 * hour).into_string();
        // The legend draws one of each too.
        assert_eq!(small.matches("<line class=\"exec\"").count(), 9 + 1);
        assert_eq!(small.matches("<line class=\"connect\"").count(), 9 + 1);
        assert_eq!(small.matches("<polygon class=\"blocked\"").count(), 2 + 1);
        assert!(small.contains("href=\"#e0\""), "marks link to their rows");
        let big = timeline(&[lane(100_000, 5_000)], 0, 12 * hour).into_string();
        let drawn = elements(&big);
        assert!(
            drawn <= 3 * BUCKETS + 20,
            "{drawn} elements for 100,000 events"
        );
        assert!(big.contains("denials, blocked"), "bucket titles count");
        assert!(big.len() < 300_000, "{} bytes", big.len());
        // A nested run's lane is indented and marked.
        let mut sub = lane(3, 1);
        sub.depth = 1;
        sub.label = "sub-agent".into();
        let two = timeline(&[lane(3, 0), sub], 0, 12 * hour).into_string();
        assert!(two.contains("└ sub-agent"), "{two}");
        assert!(
            two.contains("sub-agent (run 019aeb3c-0000-7000-8000-000000000001): "),
            "a lane's title names its whole run id: {two}"
        );
        // The axis's last time ends at the picture's right edge.
        assert_eq!(two.matches("text-anchor=\"end\"").count(), 1, "{two}");
    }

    #[test]
    fn denials_differ_by_shape_not_only_colour() {
        let blocked = shape(MarkKind::Denial(Denial::Blocked), 10.0, 10.0, "a").into_string();
        let audit = shape(MarkKind::Denial(Denial::Audit), 10.0, 10.0, "b").into_string();
        let points = |s: &str| s.matches(' ').count();
        assert_ne!(points(&blocked), points(&audit), "a triangle and a diamond");
        assert!(
            shape(MarkKind::Escape, 1.0, 1.0, "c")
                .into_string()
                .starts_with("<rect")
        );
    }
}
