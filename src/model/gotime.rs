//! Times as Go writes them: k8s `metav1.Time` (RFC3339, whole seconds) in resources, and
//! `time.Time.String()` in the `timestamp` IPAM attribute, each with its reader.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::{Deserialize, Deserializer};

/// Formats a time the way k8s `metav1.Time` marshals it: RFC3339, UTC, whole seconds
/// (`2025-06-01T12:00:00Z`).
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses an RFC3339 time (any offset, optional fraction) into UTC.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Formats a UTC time like Go's `time.Time.String()` (`2025-06-01 12:00:00.123456789 +0000 UTC`),
/// the form Calico's CNI plugin stores in the `timestamp` IPAM attribute. Trailing zeros of the
/// fraction are trimmed and a zero fraction is left out, as Go does.
pub fn go_time_string(t: &DateTime<Utc>) -> String {
    let mut s = t.format("%Y-%m-%d %H:%M:%S").to_string();
    let nanos = t.nanosecond() % 1_000_000_000;
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push_str(" +0000 UTC");
    s
}

/// Parses a time written by Go's `time.Time.String()` (what [`go_time_string`] writes, and
/// Calico's CNI plugin stores in the `timestamp` IPAM attribute), in any zone:
/// `2025-06-01 12:00:00.123456789 +0000 UTC`, optionally followed by the monotonic clock
/// reading Go appends to `time.Now()` values (`m=+0.001`). RFC3339 is accepted as well.
pub fn parse_go_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Some(t) = parse_time(s) {
        return Some(t);
    }
    // date, clock, numeric offset, then a zone name and a monotonic reading, both optional.
    let mut words = s.split_whitespace();
    let (date, clock, offset) = (words.next()?, words.next()?, words.next()?);
    let mut rest: Vec<&str> = words.collect();
    if rest.last().is_some_and(|w| w.starts_with("m=")) {
        rest.pop();
    }
    if rest.len() > 1 || rest.first().is_some_and(|w| w.starts_with("m=")) {
        return None;
    }
    DateTime::parse_from_str(
        &format!("{date} {clock} {offset}"),
        "%Y-%m-%d %H:%M:%S%.f %z",
    )
    .ok()
    .map(|t| t.with_timezone(&Utc))
}

/// Drops the sub-second part, matching what a stored `metav1.Time` keeps.
pub(crate) fn trunc_secs(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

/// `Option<DateTime<Utc>>` as a `metav1.Time` pointer: RFC3339 seconds on write; `null`,
/// absent or `""` read as `None`.
pub(crate) mod opt_time {
    use super::*;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format_time(t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.is_empty() => Ok(None),
            Some(s) => parse_time(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("invalid RFC3339 time {s:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn metav1_time_format() {
        let t = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        assert_eq!(format_time(&t), "2025-06-01T12:00:00Z");
        assert_eq!(parse_time("2025-06-01T14:00:00+02:00"), Some(t));
        assert_eq!(parse_time("nope"), None);
    }

    #[test]
    fn go_string_format_trims_fraction() {
        let t = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        assert_eq!(go_time_string(&t), "2025-06-01 12:00:00 +0000 UTC");
        let t2 = t + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(
            go_time_string(&t2),
            "2025-06-01 12:00:00.123456789 +0000 UTC"
        );
        let t3 = t + chrono::Duration::milliseconds(120);
        assert_eq!(go_time_string(&t3), "2025-06-01 12:00:00.12 +0000 UTC");
    }

    #[test]
    fn go_string_round_trips() {
        let t = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        for nanos in [0, 1, 120_000_000, 123_456_789, 999_999_999] {
            let t = t + chrono::Duration::nanoseconds(nanos);
            assert_eq!(parse_go_time(&go_time_string(&t)), Some(t), "{nanos}");
        }
    }

    #[test]
    fn go_string_reader_takes_what_go_writes() {
        let t = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).unwrap();
        let half = t + chrono::Duration::milliseconds(500);
        for (s, want) in [
            ("2025-06-01 12:00:00 +0000 UTC", Some(t)),
            // time.Now() carries a monotonic reading.
            ("2025-06-01 12:00:00.5 +0000 UTC m=+0.001234567", Some(half)),
            ("2025-06-01 12:00:00.5 +0000 UTC m=-3.5", Some(half)),
            // Other zones: a name, or the offset again where the zone has none.
            ("2025-06-01 14:00:00 +0200 CEST", Some(t)),
            ("2025-06-01 15:00:00.5 +0300 +03", Some(half)),
            ("2025-06-01 12:00:00 +0000", Some(t)),
            ("  2025-06-01 12:00:00 +0000 UTC\n", Some(t)),
            // RFC3339, as metav1.Time writes.
            ("2025-06-01T12:00:00Z", Some(t)),
            ("2025-06-01T14:00:00.5+02:00", Some(half)),
            ("yesterday", None),
            ("", None),
            ("2025-06-01 12:00:00", None),
            ("2025-06-01 12:00:00 UTC", None),
            ("2025-06-01 12:00:00 +0000 UTC extra words", None),
            ("2025-06-01 12:00:00 +0000 m=+1 UTC", None),
        ] {
            assert_eq!(parse_go_time(s), want, "{s:?}");
        }
    }
}
