//! dataplane (in progress)
