//! Times as people type them: RFC 3339, `2026-12-01T09:00`, `2026-12-01 09:00`,
//! `2026-12-01` (midnight), or `09:00` (today), in the local time zone unless an
//! offset is given; and durations such as `90s`, `30m`, `2h` or `7d`.

use std::time::Duration;

use care::Timestamp;
use chrono::{DateTime, Local, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};

/// Longest duration accepted, in days.
pub(crate) const DURATION_DAYS_MAX: u64 = 365;

/// Parses a duration: a whole number followed by `s`, `m`, `h` or `d`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad =
        || format!("`{text}` is not a duration: use a number and s, m, h or d, as in 30m or 7d");
    let unit_at =
        text.len().checked_sub(1).filter(|&i| text.is_char_boundary(i)).ok_or_else(bad)?;
    let (number, unit) = text.split_at(unit_at);
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let count: u64 = number.parse().map_err(|_| bad())?;
    let seconds = count.checked_mul(seconds_per).ok_or_else(bad)?;
    if seconds == 0 || seconds > DURATION_DAYS_MAX * 86_400 {
        return Err(format!("`{text}` must be between 1s and {DURATION_DAYS_MAX}d"));
    }
    Ok(Duration::from_secs(seconds))
}

/// Parses a time for a command-line argument.
pub(crate) fn parse(text: &str) -> Result<Timestamp, String> {
    parse_at(text, Local::now().date_naive())
}

/// Parses a time, taking `today` for a bare time of day.
pub(crate) fn parse_at(text: &str, today: NaiveDate) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Timestamp(t.timestamp_millis()));
    }
    let naive = ["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .or_else(|| {
            let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
            Some(date.and_time(NaiveTime::MIN))
        })
        .or_else(|| {
            let time = ["%H:%M", "%H:%M:%S"]
                .iter()
                .find_map(|f| NaiveTime::parse_from_str(text, f).ok())?;
            Some(today.and_time(time))
        })
        .ok_or_else(|| {
            format!("`{text}` is not a time: use RFC 3339, 2026-12-01T09:00, 2026-12-01 or 09:00")
        })?;
    let local = Local
        .from_local_datetime(&naive)
        .earliest()
        .ok_or_else(|| format!("`{text}` does not exist in the local time zone"))?;
    Ok(Timestamp(local.timestamp_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everyday_forms_parse() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).expect("valid date");
        let rfc = parse_at("2026-12-01T09:00:00Z", today).expect("rfc 3339");
        assert_eq!(rfc.as_millis(), 1_796_115_600_000);
        let long = parse_at("2026-12-01T09:00", today).expect("date and time");
        let spaced = parse_at("2026-12-01 09:00", today).expect("date and time");
        assert_eq!(long, spaced);
        let short = parse_at("09:00", today).expect("time today");
        let full = parse_at("2026-11-23T09:00", today).expect("date and time");
        assert_eq!(short, full);
        let midnight = parse_at("2026-11-23", today).expect("date");
        assert_eq!(full.as_millis() - midnight.as_millis(), 9 * 3_600_000);
    }

    #[test]
    fn durations_parse_and_nonsense_is_refused() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["", "d", "7", "7w", "-1d", "0s", "1.5h", "999999d", "7дн"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nonsense_is_refused_with_a_sentence() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 23).expect("valid date");
        for bad in ["", "tomorrow", "25:00", "2026-13-01", "9"] {
            let err = parse_at(bad, today).expect_err(bad);
            assert!(err.contains("is not a time"), "{err}");
        }
    }
}
