//! UTC civil time for AWS: SigV4's `20150830T123600Z` and the ISO 8601
//! instants AWS replies carry (`2015-08-30T12:36:00.000Z`). Proleptic
//! Gregorian calendar, days counted from 1970-01-01 (H. Hinnant's
//! `civil_from_days` / `days_from_civil`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// (year, month 1–12, day 1–31) of a day number.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// SigV4's `X-Amz-Date`: `YYYYMMDDTHHMMSSZ` (UTC). Times before 1970 are
/// clamped to the epoch (a clock that far off fails the request anyway).
pub fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{mo:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// An ISO 8601 UTC instant as AWS writes them: `YYYY-MM-DDTHH:MM:SS`, an
/// optional fraction, then `Z` (or `+00:00`). None for anything else.
pub fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept = &frac[..digits.min(9)];
        nanos = kept.parse::<u32>().ok()? * 10u32.pow(9 - kept.len() as u32);
        rest = &frac[digits..];
    }
    if rest != "Z" && rest != "+00:00" {
        return None;
    }
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + sec);
    let secs = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn amz_date_formats_utc() {
        assert_eq!(amz_date(at(0)), "19700101T000000Z");
        // the SigV4 test suite's instant
        assert_eq!(amz_date(at(1_440_938_160)), "20150830T123600Z");
        assert_eq!(amz_date(at(951_782_400)), "20000229T000000Z", "leap day");
        assert_eq!(amz_date(at(4_102_444_799)), "20991231T235959Z");
    }

    #[test]
    fn iso8601_as_aws_writes_it() {
        let t = parse_iso8601("2015-08-30T12:36:00Z").unwrap();
        assert_eq!(t, at(1_440_938_160));
        let t = parse_iso8601("2015-08-30T12:36:00.250Z").unwrap();
        assert_eq!(t, at(1_440_938_160) + Duration::from_millis(250));
        assert_eq!(
            parse_iso8601("2000-02-29T00:00:00+00:00"),
            Some(at(951_782_400))
        );
        assert_eq!(
            amz_date(parse_iso8601("2099-12-31T23:59:59.999999999999Z").unwrap()),
            "20991231T235959Z"
        );
    }

    #[test]
    fn iso8601_rejects_what_it_cannot_read() {
        for bad in [
            "",
            "2015-08-30",
            "2015-08-30T12:36:00",
            "2015-08-30T12:36:00+02:00",
            "2015-13-30T12:36:00Z",
            "2015-08-30T24:00:00Z",
            "2015-08-30T12:36:00.Z",
            "1969-12-31T23:59:59Z",
            "2015-08-3OT12:36:00Z",
            "+015-08-30T12:36:00Z",
        ] {
            assert_eq!(parse_iso8601(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn civil_days_round_trip() {
        for days in [-719_468, -1, 0, 59, 365, 10_957, 20_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
