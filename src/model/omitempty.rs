//! Go's zero values in JSON: `omitempty` tests for `skip_serializing_if`, and `null` (a nil
//! slice or map in Go) read as empty.

use serde::{Deserialize, Deserializer};

/// Reads `null` as the type's default (Go writes `null` for nil slices and maps).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// `omitempty` for bools.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

/// `omitempty` for integers.
pub(crate) fn is_zero<T: Default + PartialEq>(n: &T) -> bool {
    *n == T::default()
}
