//! driver (in progress)
