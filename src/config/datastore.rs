//! The datastore section: etcd (endpoints, TLS, credentials) or the embedded store.

use std::path::PathBuf;

use super::values::{bad, check_endpoint, check_file, parse_duration, with_calico_prefix};
use super::{ConfigArgs, DatastoreConfig, Vars};
use crate::datastore::etcd::{EtcdConfig, Secret};
use crate::error::Result;

/// Which datastore `DATASTORE_TYPE` (or, unset, the endpoints) asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Etcd,
    Local,
}

/// The etcd settings as given, each from its flag, variable or `CALICO_` variable.
struct EtcdArgs {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    username: Option<String>,
    password: Option<Secret>,
}

impl ConfigArgs {
    /// The datastore: etcd when `DATASTORE_TYPE` says so or an endpoint is set, else the
    /// embedded store.
    pub(super) fn resolve_datastore(&self, vars: Vars<'_>) -> Result<DatastoreConfig> {
        let datastore_type =
            with_calico_prefix(&self.datastore_type, vars, "DATASTORE_TYPE", |s| s);
        let urls = self.etcd_urls(vars)?;
        let kind = datastore_kind(datastore_type.as_deref(), !urls.is_empty())?;
        let timeout = parse_duration(
            "CALICO_LIBNETWORK_DATASTORE_TIMEOUT",
            &self.datastore_timeout,
        )?;
        if kind == Kind::Local {
            if self.store_path.as_os_str().is_empty() {
                return Err(bad("CALICO_LIBNETWORK_STORE", "must not be empty"));
            }
            return Ok(DatastoreConfig::Local(self.store_path.clone()));
        }
        if urls.is_empty() {
            return Err(bad(
                "ETCD_ENDPOINTS",
                "DATASTORE_TYPE is etcdv3 but no etcd endpoint is set (ETCD_ENDPOINTS or ETCD_AUTHORITY)",
            ));
        }
        let etcd = self.etcd_args(vars);
        etcd.check(&urls)?;
        Ok(DatastoreConfig::Etcd(EtcdConfig {
            endpoints: urls,
            username: etcd.username,
            password: etcd.password,
            ca_cert_file: etcd.ca,
            cert_file: etcd.cert,
            key_file: etcd.key,
            timeout,
        }))
    }

    /// The etcd URLs: `ETCD_ENDPOINTS` (comma-separated), else `ETCD_SCHEME://ETCD_AUTHORITY`;
    /// none when neither is set.
    fn etcd_urls(&self, vars: Vars<'_>) -> Result<Vec<String>> {
        let endpoints = with_calico_prefix(&self.etcd_endpoints, vars, "ETCD_ENDPOINTS", |s| s);
        let authority = with_calico_prefix(&self.etcd_authority, vars, "ETCD_AUTHORITY", |s| s);
        let scheme = with_calico_prefix(&self.etcd_scheme, vars, "ETCD_SCHEME", |s| s);
        let mut urls = Vec::new();
        if let Some(list) = endpoints.as_deref().filter(|s| !s.trim().is_empty()) {
            for u in list.split(',').filter(|u| !u.trim().is_empty()) {
                urls.push(check_endpoint("ETCD_ENDPOINTS", u)?);
            }
        } else if let Some(auth) = authority.as_deref().filter(|s| !s.trim().is_empty()) {
            let scheme = scheme.as_deref().unwrap_or("http");
            if scheme != "http" && scheme != "https" {
                return Err(bad(
                    "ETCD_SCHEME",
                    format!("expected http or https, got '{scheme}'"),
                ));
            }
            urls.push(check_endpoint(
                "ETCD_AUTHORITY",
                &format!("{scheme}://{auth}"),
            )?);
        }
        Ok(urls)
    }

    fn etcd_args(&self, vars: Vars<'_>) -> EtcdArgs {
        EtcdArgs {
            ca: with_calico_prefix(
                &self.etcd_ca_cert_file,
                vars,
                "ETCD_CA_CERT_FILE",
                PathBuf::from,
            ),
            cert: with_calico_prefix(&self.etcd_cert_file, vars, "ETCD_CERT_FILE", PathBuf::from),
            key: with_calico_prefix(&self.etcd_key_file, vars, "ETCD_KEY_FILE", PathBuf::from),
            username: with_calico_prefix(&self.etcd_username, vars, "ETCD_USERNAME", |s| s),
            password: with_calico_prefix(&self.etcd_password, vars, "ETCD_PASSWORD", Into::into),
        }
    }
}

/// The datastore kind from `DATASTORE_TYPE`; unset or empty: etcd when an endpoint is set.
fn datastore_kind(datastore_type: Option<&str>, has_endpoints: bool) -> Result<Kind> {
    match datastore_type.map(str::trim) {
        None | Some("") if has_endpoints => Ok(Kind::Etcd),
        None | Some("") => Ok(Kind::Local),
        Some("etcdv3") => Ok(Kind::Etcd),
        Some("local") => Ok(Kind::Local),
        Some("kubernetes") => Err(bad(
            "DATASTORE_TYPE",
            "the kubernetes datastore is not supported; use etcdv3 or local",
        )),
        Some(other) => Err(bad(
            "DATASTORE_TYPE",
            format!("unknown datastore type '{other}' (expected etcdv3 or local)"),
        )),
    }
}

impl EtcdArgs {
    /// The files can be read, and what must come in pairs does.
    fn check(&self, urls: &[String]) -> Result<()> {
        check_file("ETCD_CA_CERT_FILE", &self.ca)?;
        check_file("ETCD_CERT_FILE", &self.cert)?;
        check_file("ETCD_KEY_FILE", &self.key)?;
        if self.cert.is_some() != self.key.is_some() {
            return Err(bad(
                if self.cert.is_some() {
                    "ETCD_KEY_FILE"
                } else {
                    "ETCD_CERT_FILE"
                },
                "ETCD_CERT_FILE and ETCD_KEY_FILE must be set together",
            ));
        }
        let tls = self.ca.is_some() || self.cert.is_some();
        if tls && urls.iter().any(|u| u.starts_with("http://")) {
            return Err(bad(
                "ETCD_ENDPOINTS",
                "TLS certificates are set but an endpoint uses http://; use https://",
            ));
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(bad(
                if self.username.is_some() {
                    "ETCD_PASSWORD"
                } else {
                    "ETCD_USERNAME"
                },
                "ETCD_USERNAME and ETCD_PASSWORD must be set together",
            ));
        }
        Ok(())
    }
}
