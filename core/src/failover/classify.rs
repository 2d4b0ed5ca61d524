//! Outcome classification: what a response or error means for retries,
//! breakers and metrics.

use std::error::Error as StdError;
use std::time::Duration;

use http::HeaderMap;
use tonic::Code;

/// What happened to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The server answered with this gRPC status (`Ok` included).
    Status(Code),
    /// No connection to the instance could be made (refused, reset while
    /// connecting, connect time-out, TLS handshake failure): the request was
    /// not sent, and the instance is unreachable until a reconnect succeeds.
    Unreachable,
    /// The instance was reached but did not process the request: the stream
    /// was refused (`REFUSED_STREAM`), it was above the last stream id of a
    /// `GOAWAY` (RFC 9113 section 6.8), or it was queued on a connection that
    /// closed before sending it. Always safe to send elsewhere.
    NotSent,
    /// The transport failed after the request may have been sent.
    TransportError,
    /// The attempt ran out of time.
    TimedOut,
}

impl Outcome {
    /// The gRPC code this outcome reports to the caller.
    pub fn code(self) -> Code {
        match self {
            Self::Status(c) => c,
            Self::Unreachable | Self::NotSent | Self::TransportError => Code::Unavailable,
            Self::TimedOut => Code::DeadlineExceeded,
        }
    }

    /// Whether the request certainly never reached a server's application
    /// code: such attempts are retried transparently (gRPC A6).
    pub fn never_processed(self) -> bool {
        matches!(self, Self::Unreachable | Self::NotSent)
    }

    /// Whether the call succeeded.
    pub fn is_success(self) -> bool {
        self == Self::Status(Code::Ok)
    }

    /// A short label for metrics: the code name, or the failure kind.
    pub fn label(self) -> &'static str {
        match self {
            Self::Status(c) => code_name(c),
            Self::Unreachable => "unreachable",
            Self::NotSent => "not_sent",
            Self::TransportError => "transport_error",
            Self::TimedOut => "timed_out",
        }
    }
}

/// Which outcomes count as failures of the instance (for breakers, outlier
/// ejection and the balancer's feedback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureClassifier {
    /// Status codes that count as instance failures. Default: `Unavailable`,
    /// `DeadlineExceeded`, `Internal`, `Unknown`, `DataLoss`,
    /// `ResourceExhausted`. Transport errors, refused connections and
    /// time-outs always count.
    pub failure_codes: Vec<Code>,
}

impl Default for FailureClassifier {
    fn default() -> Self {
        Self {
            failure_codes: vec![
                Code::Unavailable,
                Code::DeadlineExceeded,
                Code::Internal,
                Code::Unknown,
                Code::DataLoss,
                Code::ResourceExhausted,
            ],
        }
    }
}

impl FailureClassifier {
    /// A classifier counting exactly `codes` (plus transport failures).
    pub fn new(codes: impl IntoIterator<Item = Code>) -> Self {
        Self {
            failure_codes: codes.into_iter().collect(),
        }
    }

    /// Whether `outcome` counts against the instance.
    pub fn is_failure(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Status(c) => self.failure_codes.contains(&c),
            Outcome::Unreachable
            | Outcome::NotSent
            | Outcome::TransportError
            | Outcome::TimedOut => true,
        }
    }
}

/// The gRPC status code in a header map (`grpc-status`), if present.
/// A malformed value counts as `Unknown`.
pub fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    let v = headers.get("grpc-status")?;
    let code = v
        .to_str()
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32);
    Some(code)
}

/// Classifies a transport error from a channel by its source chain.
pub fn classify_error(err: &(dyn StdError + 'static)) -> Outcome {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<tonic::ConnectError>() {
            return Outcome::Unreachable;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                return Outcome::NotSent;
            }
            // Streams above a GOAWAY's last-stream-id fail with the GOAWAY
            // itself; a graceful one (NO_ERROR) reaches no other stream.
            if h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR) {
                return Outcome::NotSent;
            }
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            // Queued on a connection that closed, or was not ready, before
            // the request was written.
            if hyper.is_canceled() || hyper.is_closed() {
                return Outcome::NotSent;
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return Outcome::Unreachable;
            }
        }
        if e.is::<tonic::TimeoutExpired>() {
            return Outcome::TimedOut;
        }
        cur = e.source();
    }
    Outcome::TransportError
}

/// Parses a `grpc-timeout` header value (`<1-8 digits><H|M|S|m|u|n>`).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as a `grpc-timeout` value: the coarsest unit that
/// keeps at least three digits (under 1 % rounding, always down), so that
/// successive calls repeat the same few values.
pub fn format_grpc_timeout(d: Duration) -> String {
    const UNITS: [(&str, u128); 5] = [
        ("H", 3_600_000_000_000),
        ("M", 60_000_000_000),
        ("S", 1_000_000_000),
        ("m", 1_000_000),
        ("u", 1_000),
    ];
    let nanos = d.as_nanos();
    for (unit, per) in UNITS {
        let v = nanos / per;
        if (100..=99_999_999).contains(&v) {
            return format!("{v}{unit}");
        }
    }
    format!("{}n", nanos.clamp(1, 99_999_999))
}

/// The lower-case snake name of a code, for metric labels.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_round_trip() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(format_grpc_timeout(Duration::from_secs(5)), "5000m");
        assert_eq!(format_grpc_timeout(Duration::from_millis(4999)), "4999m");
        for bad in ["", "m", "12", "123456789m", "1x", "-1m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
        for d in [
            Duration::from_micros(1),
            Duration::from_millis(1500),
            Duration::from_secs(500),
            Duration::from_secs(1_000_000),
        ] {
            let s = format_grpc_timeout(d);
            let back = parse_grpc_timeout(&s).unwrap();
            assert!(
                back <= d && (d - back).as_secs_f64() <= d.as_secs_f64() / 100.0,
                "{s}"
            );
        }
    }

    #[test]
    fn reads_status_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(Code::Unavailable));
        h.insert("grpc-status", "zz".parse().unwrap());
        assert_eq!(grpc_status(&h), Some(Code::Unknown));
    }

    #[test]
    fn connect_errors_are_not_sent() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = tonic::ConnectError(Box::new(io));
        assert_eq!(classify_error(&e), Outcome::Unreachable);
        assert!(Outcome::Unreachable.never_processed());
        let other = std::io::Error::other("boom");
        assert_eq!(classify_error(&other), Outcome::TransportError);
        assert!(FailureClassifier::default().is_failure(Outcome::NotSent));
        assert!(!FailureClassifier::default().is_failure(Outcome::Status(Code::NotFound)));
    }
}
