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

/// Go's `omitempty`: true for the type's zero value (`""`, `0`, `false`, an empty slice or
/// map, `nil`), which Go leaves out of the JSON.
pub(crate) fn omitempty<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}
