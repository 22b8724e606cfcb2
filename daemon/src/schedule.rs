//! When jobs fire: cron expressions evaluated in each job's IANA time zone.
//!
//! recd computes fire times itself (with croner, the parser tokio-cron-scheduler uses)
//! instead of letting tokio-cron-scheduler match them, because that crate captures a fixed
//! UTC offset when a job is created (wrong after a DST change) and combines day-of-month
//! and day-of-week with AND. Here:
//! - 5 fields (minute hour day month weekday) as in classic cron, or 6 with seconds first,
//!   or a macro (`@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`, `@yearly`/`@annually`);
//! - day-of-month and day-of-week combine with OR when both are restricted, as in Vixie
//!   cron (`0 9 1 * MON` is the 1st of the month and every Monday), and with AND when one
//!   begins with `*` (`0 9 */2 * MON`: Mondays that fall on odd days);
//! - DST, as Vixie cron does it: a job at a fixed time that falls in a skipped hour runs at
//!   the first valid time after the gap; in a repeated hour it runs once, at the first
//!   occurrence. Interval jobs (a wildcard or step in seconds, minutes or hours) follow
//!   real time: they skip the nonexistent times and run in both passes of a repeated hour.

use chrono::{DateTime, FixedOffset, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::{Cron, JobType};

#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written in the job file.
    pub expr: String,
    pub tz: Tz,
    cron: Cron,
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

const MACROS: &[&str] = &["@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"];

/// Parses a cron expression; the error names the field at fault where it can.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    let trimmed = expr.trim();
    if trimmed.starts_with('@') {
        if !MACROS.iter().any(|m| m.eq_ignore_ascii_case(trimmed)) {
            return Err(format!("{expr:?}: unknown macro (use one of {})", MACROS.join(", ")));
        }
    } else {
        let n = trimmed.split_whitespace().count();
        if n != 5 && n != 6 {
            return Err(format!(
                "{expr:?}: expected 5 fields (minute hour day month weekday), 6 (seconds first) or a macro like @daily, found {n}"
            ));
        }
    }
    if let Some(problem) = empty_element(trimmed) {
        return Err(format!("{expr:?}: {problem}"));
    }
    // Vixie cron's rule: a day field that begins with `*` (`*`, `*/2`) counts as
    // unrestricted, and the two then combine with AND; only two restricted fields combine
    // with OR. croner would read `*/2` as restricted.
    let starred = |name: &str| fields_of(trimmed).any(|(part, (field, ..))| *field == name && part.starts_with('*'));
    let and = starred("day of month") || starred("day of week");
    CronParser::builder().seconds(Seconds::Optional).dom_and_dow(and).build().parse(trimmed).map_err(|e| {
        let detail = field_problem(trimmed).unwrap_or_else(|| e.to_string().trim_end_matches('.').to_string());
        format!("{expr:?}: {detail}")
    })
}

const MONTHS: [&str; 12] = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

/// Finds an empty element in a field's comma list. croner reads `5,` as `5` but a field of
/// commas alone as matching nothing: `56 , * * * *` then never fires, and finding that out
/// walked every hour to the year 5000 (8.6 s; the `job_file` fuzz target's finding).
fn empty_element(expr: &str) -> Option<String> {
    let (part, (name, ..)) = fields_of(expr).find(|(part, _)| part.split(',').any(str::is_empty))?;
    Some(format!("{name}: {part:?} has an empty element in its comma list"))
}

/// Each field's name and range, seconds first when there are six.
const FIELDS: [(&str, u32, u32); 6] = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
];

/// The expression's fields, each with its name and range.
fn fields_of(expr: &str) -> impl Iterator<Item = (&str, &'static (&'static str, u32, u32))> {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let fields = if parts.len() == 5 { &FIELDS[1..] } else { &FIELDS[..] };
    parts.into_iter().zip(fields)
}

/// Finds a number outside its field's range, to say which field is wrong (croner only
/// says "Number out of bounds").
fn field_problem(expr: &str) -> Option<String> {
    for (part, &(name, lo, hi)) in fields_of(expr) {
        let (range, step) = part.split_once('/').unwrap_or((part, ""));
        for token in range.split([',', '-']).chain(std::iter::once(step)).filter(|t| !t.is_empty() && *t != "*") {
            match token.parse::<u32>() {
                Ok(n) if n < lo || n > hi => return Some(format!("{name} {n} is out of range {lo}-{hi}")),
                Ok(_) => {}
                Err(_) if name == "month" && MONTHS.contains(&token.to_ascii_uppercase().as_str()) => {}
                Err(_) if name == "day of week" && DAYS.contains(&token.to_ascii_uppercase().as_str()) => {}
                Err(_) => return Some(format!("{name}: {token:?} is neither a number nor a name")),
            }
        }
    }
    None
}

pub fn parse_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("unknown time zone {name:?} (use an IANA name such as \"Europe/Berlin\" or \"UTC\")"))
}

impl Schedule {
    pub fn new(expr: &str, tz: Tz) -> Result<Schedule, String> {
        let cron = parse_cron(expr)?;
        // A pattern no date matches (the 30th of February, `7L` in croner's reading) would
        // be accepted and never run. With every field non-empty the search steps at worst
        // a day at a time to the year 5000: 30-60 ms, once per job file read.
        if cron.find_next_occurrence(&Utc::now(), false).is_err() {
            return Err(format!("{:?}: no date matches it, so it would never fire", expr.trim()));
        }
        Ok(Schedule { expr: expr.trim().to_string(), tz, cron })
    }

    /// The first fire time strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ticks are whole seconds. croner keeps the fraction of the time it starts from: a
        // job armed at 11:19:18.232 would fire at 11:19:20.232, 11:19:40.232, ...
        let t = t.with_nanosecond(0).unwrap_or(t);
        let next = match self.cron.determine_job_type() {
            JobType::FixedTime => self.next_fixed_time(t),
            JobType::IntervalWildcard => self.next_real_time(t),
        };
        next.map(|n| n.with_nanosecond(0).unwrap_or(n))
    }

    /// Fixed-time jobs: croner's wall-clock walk already snaps a time in a DST gap to the
    /// end of the gap and picks the first pass of a repeated hour. It may hand back that
    /// first pass when `t` is inside the second one, hence the look-ahead and filter.
    fn next_fixed_time(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.iter_after(t.with_timezone(&self.tz)).take(4).map(|d| d.with_timezone(&Utc)).find(|d| *d > t)
    }

    /// Interval jobs follow real time: match the wall clock under the offset in force, and
    /// when the zone's offset changes before the match, continue from the change under the
    /// new offset. Skipped wall times never match; repeated ones match in both passes.
    fn next_real_time(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let (mut from, mut offset) = (t, self.offset_at(t));
        // Each pass gets past one offset change. A rare pattern crosses many: a leap-day
        // job waits up to 8 years (16 changes), `MON#5` in February 28 (56); 256 passes
        // cover 128 years of twice-yearly changes.
        for _ in 0..256 {
            let next = self.cron.find_next_occurrence(&from.with_timezone(&offset), false).ok()?.with_timezone(&Utc);
            let Some(change) = self.first_change(from, next, offset) else { return Some(next) };
            // Search again from just before the change, reading the wall clock the new way.
            (from, offset) = (change - TimeDelta::seconds(1), self.offset_at(change));
        }
        None
    }

    fn offset_at(&self, t: DateTime<Utc>) -> FixedOffset {
        self.tz.offset_from_utc_datetime(&t.naive_utc()).fix()
    }

    /// The first instant in `(lo, hi]` whose offset is not `offset`, if any. Looked for a day
    /// at a time, then to the second: two changes can lie between the ends with the same
    /// offset at both (a yearly job, from one October to the next, crosses March's and
    /// October's), and zones change their offset at most once a day.
    fn first_change(&self, lo: DateTime<Utc>, hi: DateTime<Utc>, offset: FixedOffset) -> Option<DateTime<Utc>> {
        let mut day_start = lo;
        while day_start < hi {
            let day_end = (day_start + TimeDelta::days(1)).min(hi);
            if self.offset_at(day_end) != offset {
                return Some(self.change_within(day_start, day_end, offset));
            }
            day_start = day_end;
        }
        None
    }

    /// The first instant in `(lo, hi]` whose offset is not `offset` (hi's is not).
    fn change_within(&self, mut lo: DateTime<Utc>, mut hi: DateTime<Utc>, offset: FixedOffset) -> DateTime<Utc> {
        while hi - lo > TimeDelta::seconds(1) {
            let mid = lo + (hi - lo) / 2;
            if self.offset_at(mid) == offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    /// The next `n` fire times after `t`, in real-time order, shown in the job's zone.
    pub fn upcoming(&self, t: DateTime<Utc>, n: usize) -> Vec<DateTime<Tz>> {
        std::iter::successors(self.next_after(t), |&d| self.next_after(d))
            .take(n)
            .map(|d| d.with_timezone(&self.tz))
            .collect()
    }

    /// The latest fire time in `(after, until]`, if any: the tick a daemon that was down
    /// over that span missed most recently, by the same rule as [`Schedule::next_after`].
    pub fn last_in(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // croner searches back on `until`'s wall clock: in a repeated hour it answers with
        // the first pass (and from early in the second pass, the day before), and in a
        // skipped hour the second before the gap. Never later than the real last tick, so
        // the answer is stepped forward by `next_after`: outside DST changes that is one
        // step.
        let candidate = self.cron.find_previous_occurrence(&until.with_timezone(&self.tz), true).ok()?;
        let candidate = candidate.with_timezone(&Utc);
        // Whole seconds, as `next_after` gives them (croner keeps `until`'s fraction).
        let candidate = candidate.with_nanosecond(0).unwrap_or(candidate);
        let (mut from, mut last) = ((candidate - TimeDelta::seconds(1)).max(after), None);
        // A job every second steps through a repeated hour's two passes (Antarctica/Troll
        // repeats two hours). Past that bound, no tick rather than an older one.
        for _ in 0..3 * 3600 {
            match self.next_after(from) {
                Some(next) if next <= until => (from, last) = (next, Some(next)),
                _ => return last,
            }
        }
        None
    }
}

/// After downtime: the missed tick to run now, if the latest tick in `(last, now]` is at
/// most `deadline` old. Older misses are not replayed (runs must be idempotent, and one
/// run brings the table up to date).
pub fn missed_tick_to_run(
    schedule: &Schedule,
    last: DateTime<Utc>,
    now: DateTime<Utc>,
    deadline: std::time::Duration,
) -> Option<DateTime<Utc>> {
    let missed = schedule.last_in(last, now)?;
    let age = (now - missed).to_std().unwrap_or_default();
    (age <= deadline).then_some(missed)
}

/// Formats a fire time for people: local time with its offset and zone.
pub fn show<T: TimeZone>(t: &DateTime<T>) -> String
where
    T::Offset: std::fmt::Display,
{
    t.format("%Y-%m-%d %H:%M:%S %:z").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// The next `n` fire times after `start` (UTC, RFC 3339), shown in the job's zone.
    fn fires(expr: &str, zone: &str, start: &str, n: usize) -> Vec<String> {
        let s = Schedule::new(expr, parse_zone(zone).unwrap()).unwrap();
        s.upcoming(utc(start), n).iter().map(show).collect()
    }

    proptest::proptest! {
        /// The catch-up check takes any deadline and any span of downtime without overflow.
        #[test]
        fn the_catch_up_check_takes_any_deadline(
            deadline in proptest::prelude::any::<u64>(),
            last in 0i64..253_402_300_000,
            down in 0i64..253_402_300_000,
        ) {
            let hourly = Schedule::new("@hourly", Tz::UTC).unwrap();
            let last = DateTime::from_timestamp(last, 0).unwrap();
            let now = DateTime::from_timestamp((last.timestamp() + down).min(253_402_300_000), 0).unwrap();
            if let Some(tick) = missed_tick_to_run(&hourly, last, now, std::time::Duration::from_secs(deadline)) {
                proptest::prop_assert!(tick > last && tick <= now);
            }
        }
    }

    #[test]
    fn ticks_fall_on_whole_seconds_whatever_the_fraction_of_the_start() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let every20 = Schedule::new("*/20 * * * * *", Tz::UTC).unwrap();
        assert_eq!(every20.next_after(at("2026-12-05T11:19:18.232Z")), Some(at("2026-12-05T11:19:20Z")));
        assert_eq!(every20.next_after(at("2026-12-05T11:19:20.000Z")), Some(at("2026-12-05T11:19:40Z")));
        assert_eq!(every20.next_after(at("2026-12-05T11:19:20.500Z")), Some(at("2026-12-05T11:19:40Z")));
        let nightly = Schedule::new("30 2 * * *", Tz::Europe__Berlin).unwrap();
        assert_eq!(nightly.next_after(at("2026-12-05T00:00:00.999Z")), Some(at("2026-12-05T01:30:00Z")));
    }

    #[test]
    fn five_six_fields_and_macros() {
        assert_eq!(
            fires("30 2 * * *", "UTC", "2026-01-01T00:00:00Z", 2),
            ["2026-01-01 02:30:00 +00:00", "2026-01-02 02:30:00 +00:00"]
        );
        assert_eq!(fires("15 30 2 * * *", "UTC", "2026-01-01T00:00:00Z", 1), ["2026-01-01 02:30:15 +00:00"]);
        assert_eq!(
            fires("@hourly", "UTC", "2026-01-01T00:10:00Z", 2),
            ["2026-01-01 01:00:00 +00:00", "2026-01-01 02:00:00 +00:00"]
        );
        assert_eq!(fires("@daily", "UTC", "2026-01-01T00:10:00Z", 1), ["2026-01-02 00:00:00 +00:00"]);
        // 2026-01-01 is a Thursday; @weekly is Sunday midnight
        assert_eq!(fires("@weekly", "UTC", "2026-01-01T00:10:00Z", 1), ["2026-01-04 00:00:00 +00:00"]);
    }

    /// An interval job that fires only on leap days, in a zone with daylight saving: the
    /// search crosses eight offset changes to the next leap day, and finds it.
    #[test]
    fn a_rare_interval_job_is_found_across_many_offset_changes() {
        assert_eq!(
            fires("*/30 * 29 2 *", "Europe/Berlin", "2028-03-01T00:00:00Z", 2),
            ["2032-02-29 00:00:00 +01:00", "2032-02-29 00:30:00 +01:00"]
        );
        assert_eq!(
            fires("0 */12 * 2 MON#5", "America/New_York", "2044-03-01T00:00:00Z", 1),
            ["2072-02-29 00:00:00 -05:00"]
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_as_in_classic_cron() {
        // the 1st of the month OR any Monday: Jan 1 2026 is a Thursday, Jan 5 a Monday
        assert_eq!(
            fires("0 9 1 * MON", "UTC", "2026-01-01T00:00:00Z", 3),
            ["2026-01-01 09:00:00 +00:00", "2026-01-05 09:00:00 +00:00", "2026-01-12 09:00:00 +00:00"]
        );
    }

    #[test]
    fn a_day_field_that_begins_with_a_star_combines_with_and_as_in_vixie_cron() {
        // Mondays that fall on odd days: Jan 5 2026 is a Monday, Jan 12 and 26 even ones.
        assert_eq!(
            fires("0 9 */2 * MON", "UTC", "2026-01-01T00:00:00Z", 3),
            ["2026-01-05 09:00:00 +00:00", "2026-01-19 09:00:00 +00:00", "2026-02-09 09:00:00 +00:00"]
        );
        // `*/1` for the day of week restricts nothing: the 1st of each month.
        assert_eq!(fires("0 9 1 * */1", "UTC", "2026-01-02T00:00:00Z", 1), ["2026-02-01 09:00:00 +00:00"]);
    }

    /// A yearly interval job on the day the clocks go back: from one such day to the next
    /// the offset changes twice and is the same at both ends, and the search must still
    /// see the repeated hour.
    #[test]
    fn a_yearly_interval_job_runs_in_both_passes_of_its_repeated_hour() {
        assert_eq!(
            fires("*/30 2 31 10 *", "Europe/Berlin", "2026-12-04T00:00:00Z", 5),
            [
                "2027-10-31 02:00:00 +02:00",
                "2027-10-31 02:30:00 +02:00",
                "2027-10-31 02:00:00 +01:00",
                "2027-10-31 02:30:00 +01:00",
                "2028-10-31 02:00:00 +01:00"
            ]
        );
    }

    #[test]
    fn a_zone_shifts_the_utc_instant() {
        let s = Schedule::new("0 3 * * *", parse_zone("Europe/Berlin").unwrap()).unwrap();
        assert_eq!(s.next_after(utc("2026-01-10T00:00:00Z")), Some(utc("2026-01-10T02:00:00Z")));
        assert_eq!(s.next_after(utc("2026-07-10T00:00:00Z")), Some(utc("2026-07-10T01:00:00Z")));
    }

    #[test]
    fn berlin_spring_forward() {
        // 2026-03-29: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist that day.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-03-27T12:00:00Z", 3),
            ["2026-03-28 02:30:00 +01:00", "2026-03-29 03:00:00 +02:00", "2026-03-30 02:30:00 +02:00"]
        );
        // an hourly job simply has one hour less that day
        assert_eq!(
            fires("0 * * * *", "Europe/Berlin", "2026-03-29T00:30:00Z", 2),
            ["2026-03-29 03:00:00 +02:00", "2026-03-29 04:00:00 +02:00"]
        );
    }

    #[test]
    fn berlin_fall_back() {
        // 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", 3),
            ["2026-10-25 02:30:00 +02:00", "2026-10-26 02:30:00 +01:00", "2026-10-27 02:30:00 +01:00"]
        );
        // an every-30-minutes job runs in both passes of the repeated hour
        assert_eq!(
            fires("*/30 * * * *", "Europe/Berlin", "2026-10-24T23:45:00Z", 5),
            [
                "2026-10-25 02:00:00 +02:00",
                "2026-10-25 02:30:00 +02:00",
                "2026-10-25 02:00:00 +01:00",
                "2026-10-25 02:30:00 +01:00",
                "2026-10-25 03:00:00 +01:00"
            ]
        );
    }

    #[test]
    fn new_york_spring_forward_and_fall_back() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT
        assert_eq!(
            fires("30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", 2),
            ["2026-03-08 03:00:00 -04:00", "2026-03-09 02:30:00 -04:00"]
        );
        // 2026-11-01: 02:00 EDT goes back to 01:00 EST; 01:30 happens twice, the job runs once
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", 2),
            ["2026-11-01 01:30:00 -04:00", "2026-11-02 01:30:00 -05:00"]
        );
    }

    #[test]
    fn missed_ticks_are_found_for_the_deadline_check() {
        let s = Schedule::new("0 * * * *", Tz::UTC).unwrap();
        let last = s.last_in(utc("2026-01-01T00:30:00Z"), utc("2026-01-01T03:10:00Z"));
        assert_eq!(last, Some(utc("2026-01-01T03:00:00Z")));
        assert_eq!(s.last_in(utc("2026-01-01T03:00:00Z"), utc("2026-01-01T03:10:00Z")), None);
    }

    /// Catch-up across Berlin's DST changes of 2026 finds the tick `next_after` would have
    /// fired last: in the second pass of a repeated hour, and after a skipped hour.
    #[test]
    fn missed_ticks_across_dst_changes_are_those_real_time_passed() {
        let berlin = parse_zone("Europe/Berlin").unwrap();
        let cases = [
            // (expression, after, until, latest tick in between)
            // 2026-10-25: 03:00 CEST (01:00Z) goes back to 02:00 CET; the fixed-time job
            // ran in the first pass, 02:30 CEST = 00:30Z.
            ("30 2 * * *", "2026-10-24T12:00:00Z", "2026-10-25T01:45:00Z", Some("2026-10-25T00:30:00Z")),
            ("30 2 * * *", "2026-10-24T12:00:00Z", "2026-10-25T01:10:00Z", Some("2026-10-25T00:30:00Z")),
            // interval jobs run in both passes: 02:30 CET = 01:30Z, 02:00 CET = 01:00Z
            ("*/30 * * * *", "2026-10-24T12:00:00Z", "2026-10-25T01:45:00Z", Some("2026-10-25T01:30:00Z")),
            ("0 * * * *", "2026-10-24T12:00:00Z", "2026-10-25T01:45:00Z", Some("2026-10-25T01:00:00Z")),
            ("*/30 * * * *", "2026-10-25T01:30:00Z", "2026-10-25T01:45:00Z", None),
            // 2026-03-29: 02:00 CET (01:00Z) jumps to 03:00 CEST; 02:30 runs at 03:00 CEST
            ("30 2 * * *", "2026-03-28T12:00:00Z", "2026-03-29T01:10:00Z", Some("2026-03-29T01:00:00Z")),
            ("30 2 * * *", "2026-03-29T01:00:00Z", "2026-03-29T01:10:00Z", None),
        ];
        for (expr, after, until, want) in cases {
            let s = Schedule::new(expr, berlin).unwrap();
            assert_eq!(s.last_in(utc(after), utc(until)), want.map(utc), "{expr} in ({after}, {until}]");
        }
        // A deadline of 20 minutes finds the second pass's 02:30 missed 15 minutes before.
        let every_half_hour = Schedule::new("*/30 * * * *", berlin).unwrap();
        let (last, now) = (utc("2026-10-24T12:00:00Z"), utc("2026-10-25T01:45:00Z"));
        let due = missed_tick_to_run(&every_half_hour, last, now, std::time::Duration::from_secs(1200));
        assert_eq!(due, Some(utc("2026-10-25T01:30:00Z")));
    }

    #[test]
    fn a_missed_tick_runs_only_within_the_deadline() {
        let hourly = Schedule::new("0 * * * *", Tz::UTC).unwrap();
        let secs = std::time::Duration::from_secs;
        let cases = [
            // (last handled tick, now, deadline, tick to run)
            ("2026-01-01T00:00:00Z", "2026-01-01T03:10:00Z", 900, Some("2026-01-01T03:00:00Z")),
            ("2026-01-01T00:00:00Z", "2026-01-01T03:20:00Z", 900, None),
            ("2026-01-01T03:00:00Z", "2026-01-01T03:10:00Z", 900, None),
            ("2025-12-01T00:00:00Z", "2026-01-01T03:00:00Z", 0, Some("2026-01-01T03:00:00Z")),
        ];
        for (last, now, deadline, want) in cases {
            let got = missed_tick_to_run(&hourly, utc(last), utc(now), secs(deadline));
            assert_eq!(got, want.map(utc), "last {last}, now {now}, deadline {deadline}s");
        }
    }

    #[test]
    fn bad_expressions_say_why() {
        assert!(parse_cron("* * *").unwrap_err().contains("expected 5 fields"));
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("@sometimes").is_err());
        let empty = parse_cron("56 , * * * *").unwrap_err();
        assert!(empty.contains("minute: \",\" has an empty element"), "{empty}");
        assert!(parse_cron("0 1,,2 * * *").unwrap_err().contains("hour: \"1,,2\" has an empty element"));
        assert!(parse_cron("0 5, * * *").is_err() && parse_cron("0 5,6 * * *").is_ok());
        assert!(parse_zone("Mars/Olympus").unwrap_err().contains("unknown time zone \"Mars/Olympus\""));
    }
}
