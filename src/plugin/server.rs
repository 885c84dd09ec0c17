//! The HTTP/1.1 server on Docker's plugin socket.
//!
//! Docker POSTs `/<Kind>.<Method>` with no `Content-Type` and sometimes an empty body, so
//! bodies are read as bytes and decoded here (empty means `{}`). Success is 200 with a JSON
//! body (never empty: Docker reads an empty 200 as an error); failure is `{"Err": ...}`
//! with 400 when the request was at fault (an undecodable body, naming the field, or input
//! the driver refuses: [`crate::Error::is_invalid`]) and 500 otherwise; an unknown method is
//! 404, which Docker reads as "not implemented".

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tokio::net::UnixListener;

use super::handlers;
use crate::datastore::remote;
use crate::driver::Driver;
use crate::error::{Error, Result};

/// Shared state of the server.
pub struct AppState {
    /// The network and IPAM driver.
    pub driver: Arc<Driver>,
    /// Deadline for each request.
    pub timeout: Duration,
}

/// Largest request body accepted (Docker's are a few KiB).
pub const MAX_BODY: usize = 1 << 20;

/// The IDs a request names, for its log line (absent or non-string fields are left out).
#[derive(serde::Deserialize, Default)]
struct RequestIds {
    #[serde(rename = "NetworkID", default)]
    network_id: Option<serde_json::Value>,
    #[serde(rename = "EndpointID", default)]
    endpoint_id: Option<serde_json::Value>,
    #[serde(rename = "PoolID", default)]
    pool_id: Option<serde_json::Value>,
    #[serde(rename = "Address", default)]
    address: Option<serde_json::Value>,
}

fn id_text(v: &Option<serde_json::Value>) -> Option<&str> {
    v.as_ref()
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
}

fn err_response(status: StatusCode, msg: String) -> Response {
    (status, Json(json!({ "Err": msg }))).into_response()
}

/// Decodes, runs with the deadline, logs once, answers in Docker's format.
async fn call<Req, Resp, F, Fut>(
    state: Arc<AppState>,
    method: &'static str,
    body: std::result::Result<Bytes, BytesRejection>,
    f: F,
) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Arc<Driver>, Req) -> Fut,
    Fut: Future<Output = Result<Resp>>,
{
    let start = Instant::now();
    // A body over the size limit (or cut short) is refused in Docker's error format.
    let body = match body {
        Ok(b) => b,
        Err(rej) => {
            let msg = format!("read {method} request: {}", rej.body_text());
            tracing::warn!(method, outcome = "bad-request", error = %msg, "request refused");
            return err_response(rej.status(), msg);
        }
    };
    tracing::debug!(method, body = %String::from_utf8_lossy(&body), "request");
    // Docker sends no body at all for calls without arguments.
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    let req: Req = match serde_json::from_slice(text) {
        Ok(r) => r,
        Err(e) => {
            // Docker resends a call that a plugin restart interrupted, but without its body.
            let msg = if body.is_empty() {
                format!("decode {method} request: empty body (Docker resends calls cut short by a plugin restart without their body; start the container again)")
            } else {
                format!("decode {method} request: {e}")
            };
            tracing::warn!(method, outcome = "bad-request", error = %msg, "request refused");
            crate::metrics::request(method, "bad-request", start.elapsed());
            return err_response(StatusCode::BAD_REQUEST, msg);
        }
    };
    // The IDs for the one log line of this request (a second, tolerant decode: microseconds).
    let ids: RequestIds = serde_json::from_slice(text).unwrap_or_default();
    let (network_id, endpoint_id, pool_id, address) = (
        id_text(&ids.network_id),
        id_text(&ids.endpoint_id),
        id_text(&ids.pool_id),
        id_text(&ids.address),
    );
    let result = match tokio::time::timeout(state.timeout, f(state.driver.clone(), req)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            what: method.to_string(),
            after: state.timeout,
        }),
    };
    let elapsed = start.elapsed();
    let ms = elapsed.as_secs_f64() * 1000.0;
    // The one log line of a request: the same fields at info (ok) or warn (error).
    macro_rules! request_line {
        ($level:ident, $($outcome:tt)*) => {
            tracing::$level!(
                method, network_id, endpoint_id, pool_id, address,
                duration_ms = format!("{ms:.2}"), $($outcome)* "request"
            )
        };
    }
    match result {
        Ok(resp) => {
            crate::metrics::request(method, "ok", elapsed);
            request_line!(info, outcome = "ok",);
            (StatusCode::OK, Json(resp)).into_response()
        }
        Err(e) => {
            crate::metrics::request(method, "error", elapsed);
            request_line!(warn, outcome = "error", error = %e,);
            // Docker treats every non-200 alike; 400 marks input that can never succeed.
            let status = if e.is_invalid() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            err_response(status, e.to_string())
        }
    }
}

macro_rules! routes {
    ($router:expr, $( $path:literal => $handler:path ),* $(,)?) => {
        $router
        $(
            .route(
                concat!("/", $path),
                post(|State(s): State<Arc<AppState>>, body: std::result::Result<Bytes, BytesRejection>| {
                    call(s, $path, body, $handler)
                }),
            )
        )*
    };
}

/// Every route of both drivers.
pub fn router(state: Arc<AppState>) -> Router {
    let r = routes!(Router::new(),
        "Plugin.Activate" => handlers::activate,
        "NetworkDriver.GetCapabilities" => handlers::network_capabilities,
        "NetworkDriver.CreateNetwork" => handlers::create_network,
        "NetworkDriver.DeleteNetwork" => handlers::delete_network,
        "NetworkDriver.AllocateNetwork" => handlers::allocate_network,
        "NetworkDriver.FreeNetwork" => handlers::free_network,
        "NetworkDriver.CreateEndpoint" => handlers::create_endpoint,
        "NetworkDriver.DeleteEndpoint" => handlers::delete_endpoint,
        "NetworkDriver.EndpointOperInfo" => handlers::endpoint_oper_info,
        "NetworkDriver.Join" => handlers::join,
        "NetworkDriver.Leave" => handlers::leave,
        "NetworkDriver.DiscoverNew" => handlers::discover,
        "NetworkDriver.DiscoverDelete" => handlers::discover,
        "NetworkDriver.ProgramExternalConnectivity" => handlers::program_external_connectivity,
        "NetworkDriver.RevokeExternalConnectivity" => handlers::revoke_external_connectivity,
        "IpamDriver.GetCapabilities" => handlers::ipam_capabilities,
        "IpamDriver.GetDefaultAddressSpaces" => handlers::default_address_spaces,
        "IpamDriver.RequestPool" => handlers::request_pool,
        "IpamDriver.ReleasePool" => handlers::release_pool,
        "IpamDriver.RequestAddress" => handlers::request_address,
        "IpamDriver.ReleaseAddress" => handlers::release_address,
    );
    r.route(remote::ROUTE, post(datastore_route))
        .fallback(unknown)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The IPAM driver alone, for the `calico-ipam` socket: networks made with the Go plugin's
/// `--ipam-driver calico-ipam` keep their IPAM driver. Same driver, same state.
pub fn ipam_router(state: Arc<AppState>) -> Router {
    let r = routes!(Router::new(),
        "Plugin.Activate" => handlers::activate_ipam,
        "IpamDriver.GetCapabilities" => handlers::ipam_capabilities,
        "IpamDriver.GetDefaultAddressSpaces" => handlers::default_address_spaces,
        "IpamDriver.RequestPool" => handlers::request_pool,
        "IpamDriver.ReleasePool" => handlers::release_pool,
        "IpamDriver.RequestAddress" => handlers::request_address,
        "IpamDriver.ReleaseAddress" => handlers::release_address,
    );
    r.fallback(unknown)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Who called, from the socket's peer credentials.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// The calling process's user, when the kernel tells.
    pub uid: Option<u32>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, UnixListener>>
    for Caller
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, UnixListener>) -> Self {
        Caller {
            uid: stream.io().peer_cred().ok().map(|c| c.uid()),
        }
    }
}

/// The operator commands' way to the plugin's datastore (see [`remote`]): root or the
/// plugin's own user only, whatever the socket's mode says.
async fn datastore_route(
    State(state): State<Arc<AppState>>,
    axum::extract::ConnectInfo(caller): axum::extract::ConnectInfo<Caller>,
    body: Bytes,
) -> Response {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !matches!(caller.uid, Some(uid) if uid == 0 || uid == me) {
        tracing::warn!(uid = ?caller.uid, "datastore route refused: caller is not root");
        return err_response(
            StatusCode::FORBIDDEN,
            "use the plugin's datastore: only root may".to_string(),
        );
    }
    let req: remote::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return err_response(
                StatusCode::BAD_REQUEST,
                format!("decode datastore request: {e}"),
            )
        }
    };
    tracing::debug!(?req, "datastore request from an operator command");
    let store = state.driver.store().clone();
    match tokio::time::timeout(state.timeout, remote::serve(store.as_ref(), req)).await {
        Ok(Ok(reply)) => (StatusCode::OK, Json(reply)).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, Json(e)).into_response(),
        Err(_) => err_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("datastore request timed out after {:?}", state.timeout),
        ),
    }
}

async fn unknown(uri: Uri) -> Response {
    tracing::info!(path = %uri.path(), outcome = "not-implemented", "request");
    // Docker reads 404 as "this plugin does not implement that method".
    err_response(
        StatusCode::NOT_FOUND,
        format!("unknown plugin method {}", uri.path()),
    )
}

/// Binds the plugin socket: replaces a stale socket file from a crashed run, refuses to
/// steal a socket another live instance is serving, and sets mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create directory {}", dir.display()), e))?;
    }
    if path.exists() || std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::msg(format!(
                "bind plugin socket {}: another process is serving on it",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::io(format!("remove stale socket {}", path.display()), e))?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("bind plugin socket {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io(format!("set mode of {}", path.display()), e))?;
    Ok(listener)
}

/// Serves until `shutdown` completes, then removes the socket file.
pub async fn serve(
    listener: UnixListener,
    socket_path: PathBuf,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_router(listener, socket_path, router(state), shutdown).await
}

/// [`serve`] with the IPAM-only router ([`ipam_router`]).
pub async fn serve_ipam(
    listener: UnixListener,
    socket_path: PathBuf,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_router(listener, socket_path, ipam_router(state), shutdown).await
}

async fn serve_router(
    listener: UnixListener,
    socket_path: PathBuf,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let app = router.into_make_service_with_connect_info::<Caller>();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::io("serve plugin socket", e));
    let _ = std::fs::remove_file(&socket_path);
    result
}
