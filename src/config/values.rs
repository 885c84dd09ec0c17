//! Checks of single values shared by the resolvers; each error names the variable.

use std::path::PathBuf;
use std::time::Duration;

use super::Vars;
use crate::error::{Error, Result};

/// The variable's value, unless unset or empty.
pub(super) fn nonempty(vars: Vars<'_>, name: &str) -> Option<String> {
    vars(name).filter(|v| !v.is_empty())
}

/// The value from the flag or plain variable, else from `CALICO_<NAME>`.
pub(super) fn with_calico_prefix<T: Clone>(
    v: &Option<T>,
    vars: Vars<'_>,
    name: &str,
    parse: impl Fn(String) -> T,
) -> Option<T> {
    v.clone()
        .or_else(|| nonempty(vars, &format!("CALICO_{name}")).map(parse))
}

/// The configuration error for `var`.
pub(super) fn bad(var: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("{var}: {msg}"))
}

/// Checks a Docker host address: `unix:///path`, `tcp://host:port` or `http://host:port`.
pub(super) fn check_docker_host(var: &str, host: &str) -> Result<()> {
    if let Some(path) = host.strip_prefix("unix://") {
        if path.is_empty() || !path.starts_with('/') {
            return Err(bad(
                var,
                format!("'{host}' needs an absolute socket path (unix:///path)"),
            ));
        }
        return Ok(());
    }
    let rest = host
        .strip_prefix("tcp://")
        .or_else(|| host.strip_prefix("http://"))
        .ok_or_else(|| {
            bad(
                var,
                format!("'{host}' must start with unix://, tcp:// or http://"),
            )
        })?;
    if rest.split('/').next().unwrap_or_default().is_empty() {
        return Err(bad(var, format!("'{host}' has no host")));
    }
    Ok(())
}

/// A duration greater than zero (`10s`, `500ms`, `2m`).
pub(super) fn parse_duration(var: &str, s: &str) -> Result<Duration> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| bad(var, format!("cannot parse duration '{s}': {e}")))?;
    if d.is_zero() {
        return Err(bad(var, "must be greater than zero"));
    }
    Ok(d)
}

/// `true`/`false` and their usual spellings; empty is false.
pub(super) fn parse_bool(var: &str, s: &str) -> Result<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        other => Err(bad(var, format!("expected true or false, got '{other}'"))),
    }
}

/// An `http://` or `https://` URL with a host, without its trailing `/`.
pub(super) fn check_endpoint(var: &str, url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/').to_string();
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad(var, format!("cannot parse URL '{url}': {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(bad(
                var,
                format!("URL '{url}' must start with http:// or https://"),
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(bad(var, format!("URL '{url}' has no host")));
    }
    Ok(url)
}

/// A file that, when set, can be opened.
pub(super) fn check_file(var: &str, path: &Option<PathBuf>) -> Result<()> {
    if let Some(p) = path {
        std::fs::File::open(p)
            .map_err(|e| bad(var, format!("cannot read {}: {e}", p.display())))?;
    }
    Ok(())
}
