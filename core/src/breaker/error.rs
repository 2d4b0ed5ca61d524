//! [`BreakerConfigError`]: why a breaker configuration was rejected.

/// Why a breaker configuration was rejected by a `validate` method
/// ([`OpenPolicy::validate`](super::OpenPolicy::validate),
/// [`ConsecutiveFailures::validate`](super::ConsecutiveFailures::validate),
/// [`ErrorRate::validate`](super::ErrorRate::validate)).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BreakerConfigError {
    /// A multiplier is below 1 or not a finite number.
    #[error("{field} must be a finite number >= 1, got {value}")]
    Multiplier {
        /// The field name.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A ratio is outside `(0, 1]`.
    #[error("{field} must be in (0, 1], got {value}")]
    Ratio {
        /// The field name.
        field: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// A count is outside its accepted range.
    #[error("{field} must be in {min}..={max}, got {value}")]
    Count {
        /// The field name.
        field: &'static str,
        /// The rejected value.
        value: u64,
        /// Smallest accepted value.
        min: u64,
        /// Largest accepted value.
        max: u64,
    },
    /// A duration is zero.
    #[error("{field} must be longer than zero")]
    Duration {
        /// The field name.
        field: &'static str,
    },
}

/// Checks that `value` is a finite multiplier `>= 1`.
pub(crate) fn check_multiplier(field: &'static str, value: f64) -> Result<(), BreakerConfigError> {
    if value.is_finite() && value >= 1.0 {
        Ok(())
    } else {
        Err(BreakerConfigError::Multiplier { field, value })
    }
}

/// Checks that `value` is a ratio in `(0, 1]`.
pub(crate) fn check_ratio(field: &'static str, value: f64) -> Result<(), BreakerConfigError> {
    if value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(BreakerConfigError::Ratio { field, value })
    }
}

/// Checks that `value` is in `min..=max`.
pub(crate) fn check_count(
    field: &'static str,
    value: u32,
    min: u32,
    max: u32,
) -> Result<(), BreakerConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(BreakerConfigError::Count {
            field,
            value: value.into(),
            min: min.into(),
            max: max.into(),
        })
    }
}

/// Checks that `value` is longer than zero.
pub(crate) fn check_duration(
    field: &'static str,
    value: std::time::Duration,
) -> Result<(), BreakerConfigError> {
    if value.is_zero() {
        Err(BreakerConfigError::Duration { field })
    } else {
        Ok(())
    }
}
