//! The crate's one error type.
//!
//! Messages follow the form *verb object: cause* (`create veth cali1234: file exists`).
//! The plugin layer turns any [`Error`] into Docker's `{"Err": "..."}` in one place.

use std::fmt;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure the library reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something we cannot act on (bad CIDR, unknown option, bad ID).
    #[error("{0}")]
    Invalid(String),
    /// A create found the key already present.
    #[error("key {key} already exists")]
    Exists { key: String },
    /// The key (or resource) is absent.
    #[error("{key} does not exist")]
    NotFound { key: String },
    /// A compare-and-swap lost: the key changed since it was read.
    #[error("update {key}: revision conflict")]
    Conflict { key: String },
    /// The datastore could not be reached or did not answer in time.
    #[error("datastore unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for changes the store no longer keeps (etcd compacted its history, or
    /// the embedded store's bounded history moved past them): list again, then watch on.
    #[error("watch {what}: history up to revision {compacted} is compacted")]
    Compacted { what: String, compacted: i64 },
    /// A resource only one process may hold (the embedded store's file) is held by another.
    #[error("{what}: in use by another process")]
    InUse { what: String },
    /// The Docker Engine API could not be reached or refused a call (never a datastore
    /// problem: the datastore may be fine while dockerd is down).
    #[error("docker API unavailable: {0}")]
    Docker(String),
    /// Something timed out.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        what: String,
        after: std::time::Duration,
    },
    /// A kernel call failed; `errno` is kept so callers can treat EEXIST/ENOENT as benign.
    #[error("{op}: {msg}")]
    Kernel {
        op: String,
        errno: Option<i32>,
        msg: String,
    },
    /// I/O on a named path or operation.
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// Stored or received JSON that does not decode.
    #[error("decode {what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// `datastoreReady` is false in ClusterInformation `default` (a migration or upgrade
    /// lock): the sentence is Calico's CNI plugin's, so that one search finds both.
    #[error(
        "Calico is currently not ready to process requests (datastoreReady is false in \
         ClusterInformation default: a datastore migration or upgrade lock is set; \
         `calicoctl datastore migrate unlock` lifts it)"
    )]
    NotReady,
    /// Invalid configuration found at start.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Plain message for conditions with no better variant.
    #[error("{0}")]
    Message(String),
    /// Context added on the way up: `context: source`.
    #[error("{context}: {source}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Wraps this error with a leading context ("verb object").
    pub fn context(self, context: impl fmt::Display) -> Self {
        Error::Context {
            context: context.to_string(),
            source: Box::new(self),
        }
    }

    /// The innermost error, below any [`Error::Context`] layers.
    pub fn root(&self) -> &Error {
        match self {
            Error::Context { source, .. } => source.root(),
            other => other,
        }
    }

    /// True when the root cause is a lost compare-and-swap.
    pub fn is_conflict(&self) -> bool {
        matches!(self.root(), Error::Conflict { .. })
    }

    /// `Ok` for no error, the error itself for one, and all of them (in order, joined by
    /// `; `) for more: what a teardown that carries on past failures returns.
    pub fn from_list(mut errors: Vec<Error>) -> Result<()> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Message(
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        }
    }

    /// True when a datastore write lost a race: the key changed (compare-and-swap), appeared
    /// or vanished since it was read. Retrying from a fresh read is the answer.
    pub fn is_lost_race(&self) -> bool {
        matches!(
            self.root(),
            Error::Conflict { .. } | Error::Exists { .. } | Error::NotFound { .. }
        )
    }

    /// True when the root cause is "already exists" (datastore key or kernel EEXIST).
    pub fn is_exists(&self) -> bool {
        match self.root() {
            Error::Exists { .. } => true,
            Error::Kernel { errno, .. } => *errno == Some(libc::EEXIST),
            _ => false,
        }
    }

    /// True when the root cause is "not found" (datastore key or kernel ENOENT/ENODEV/ESRCH).
    pub fn is_not_found(&self) -> bool {
        match self.root() {
            Error::NotFound { .. } => true,
            Error::Kernel { errno, .. } => {
                matches!(*errno, Some(e) if e == libc::ENOENT || e == libc::ENODEV || e == libc::ESRCH)
            }
            _ => false,
        }
    }

    /// True when the caller's input was at fault: the HTTP layer answers 400 for these (from
    /// decoding or from the driver's own checks) and 500 for every other error.
    pub fn is_invalid(&self) -> bool {
        matches!(self.root(), Error::Invalid(_))
    }

    /// True when the root cause is [`Error::InUse`].
    pub fn is_in_use(&self) -> bool {
        matches!(self.root(), Error::InUse { .. })
    }

    /// True when the Docker Engine API failed (unreachable, refused, or an error answer).
    pub fn is_docker(&self) -> bool {
        matches!(self.root(), Error::Docker(_))
    }

    /// True when the datastore was unreachable or slow.
    pub fn is_unavailable(&self) -> bool {
        matches!(self.root(), Error::Unavailable(_) | Error::Timeout { .. })
    }

    /// True when the root cause is [`Error::Compacted`].
    pub fn is_compacted(&self) -> bool {
        matches!(self.root(), Error::Compacted { .. })
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::Invalid(msg.to_string())
    }

    /// Shorthand for [`Error::Message`].
    pub fn msg(msg: impl fmt::Display) -> Self {
        Error::Message(msg.to_string())
    }

    /// Wraps an io error with the operation that failed.
    pub fn io(op: impl fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            op: op.to_string(),
            source,
        }
    }

    /// Wraps a JSON error with what was being decoded.
    pub fn json(what: impl fmt::Display, source: serde_json::Error) -> Self {
        Error::Json {
            what: what.to_string(),
            source,
        }
    }
}

/// Adds context to any `Result<_, Error>`.
pub trait ResultExt<T> {
    /// Wraps the error, if any, with `context` ("verb object").
    fn ctx(self, context: impl fmt::Display) -> Result<T>;
    /// Like [`ResultExt::ctx`] but builds the context lazily.
    fn with_ctx<F: FnOnce() -> String>(self, f: F) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn ctx(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.context(context))
    }
    fn with_ctx<F: FnOnce() -> String>(self, f: F) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_chains_read_verb_object_cause() {
        let e = Error::Conflict { key: "/k".into() }.context("assign address");
        assert_eq!(
            e.to_string(),
            "assign address: update /k: revision conflict"
        );
        assert!(e.is_conflict());
        assert!(!e.is_exists());
    }

    #[test]
    fn docker_api_errors_are_not_datastore_errors() {
        let e =
            Error::Docker("connect unix:///nowhere.sock: no such file".into()).context("reconcile");
        assert!(e.is_docker());
        assert!(!e.is_unavailable());
        assert_eq!(
            e.to_string(),
            "reconcile: docker API unavailable: connect unix:///nowhere.sock: no such file"
        );
    }

    #[test]
    fn kernel_errno_classifies() {
        let e = Error::Kernel {
            op: "create veth".into(),
            errno: Some(libc::EEXIST),
            msg: "file exists".into(),
        };
        assert!(e.is_exists());
        assert!(!e.is_not_found());
    }
}
