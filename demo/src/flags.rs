//! Value parsers shared by the command lines.

use std::time::Duration;

/// Parses a duration such as `10s`, `250ms` or `1m 30s`.
pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 10s, 250ms, 1m)"))
}

/// Parses a duration that must be longer than zero.
pub fn positive_duration(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

/// Parses a registration TTL: a duration the registries accept
/// ([`fyerrpc::registry::MIN_TTL`] to [`fyerrpc::registry::MAX_TTL`]).
pub fn ttl(s: &str) -> Result<Duration, String> {
    use fyerrpc::registry::{MAX_TTL, MIN_TTL};
    let d = duration(s)?;
    if (MIN_TTL..=MAX_TTL).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "must be between {} and {}",
            humantime::format_duration(MIN_TTL),
            humantime::format_duration(MAX_TTL)
        ))
    }
}

/// Parses a probability in `0..=1`.
pub fn rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{s} is outside 0..1"))
    }
}

/// Parses a number that must be at least 1.
pub fn positive(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a positive whole number")),
    }
}

/// Parses a multiplier of at least 1.
pub fn multiplier(s: &str) -> Result<f64, String> {
    let m: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if m.is_finite() && m >= 1.0 {
        Ok(m)
    } else {
        Err(format!("{s} must be a number of at least 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("10").is_err());
        assert!(positive_duration("0s").is_err());
        assert_eq!(ttl("3s"), Ok(Duration::from_secs(3)));
        for bad in ["0s", "1ns", "999ms", "25h", "x"] {
            assert!(ttl(bad).is_err(), "{bad}");
        }
        assert_eq!(rate("0.1"), Ok(0.1));
        for bad in ["-0.1", "1.5", "NaN", "x", "inf"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
        assert_eq!(positive("3"), Ok(3));
        assert!(positive("0").is_err() && positive("-1").is_err());
        assert_eq!(multiplier("1.5"), Ok(1.5));
        assert!(multiplier("0.5").is_err() && multiplier("inf").is_err());
    }
}
