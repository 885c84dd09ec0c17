//! A minimal client of the plugin socket, as Docker calls it: is a plugin serving there?
//! (`status` reports it; `firewall remove` refuses while one serves.)

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long `status` waits for the plugin socket to answer.
pub(crate) const SOCKET_TIMEOUT: Duration = Duration::from_secs(3);

/// Posts `Plugin.Activate` on `path` as Docker does; Ok when both drivers are announced.
pub(crate) async fn plugin_activate(
    path: &Path,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let attempt = async {
        let mut s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(
            b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let first = text.lines().next().unwrap_or("").trim().to_string();
        if first.split_whitespace().nth(1) == Some("200")
            && text.contains("NetworkDriver")
            && text.contains("IpamDriver")
        {
            Ok(())
        } else {
            Err(format!("Plugin.Activate answered '{first}'"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer to Plugin.Activate within {}",
            humantime::format_duration(timeout)
        )),
    }
}
