//! A minimal client of the plugin socket, as Docker calls it: is a plugin serving there?
//! (`status` reports it; `firewall remove` refuses while one serves.)

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// How long `status` waits for the plugin socket to answer.
pub(crate) const SOCKET_TIMEOUT: Duration = Duration::from_secs(3);

/// Posts `Plugin.Activate` on `path` as Docker does; Ok when both drivers are announced.
pub(crate) async fn plugin_activate(path: &Path, timeout: Duration) -> Result<()> {
    match tokio::time::timeout(timeout, activate(path)).await {
        Ok(r) => r,
        Err(_) => Err(Error::msg(format!(
            "no answer to Plugin.Activate within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

async fn activate(path: &Path) -> Result<()> {
    let mut s = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| Error::io("connect", e))?;
    s.write_all(
        b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nContent-Length: 0\r\n\
          Connection: close\r\n\r\n",
    )
    .await
    .map_err(|e| Error::io("write", e))?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .map_err(|e| Error::io("read", e))?;
    let text = String::from_utf8_lossy(&buf);
    let first = text.lines().next().unwrap_or("").trim().to_string();
    if first.split_whitespace().nth(1) == Some("200")
        && text.contains("NetworkDriver")
        && text.contains("IpamDriver")
    {
        Ok(())
    } else {
        Err(Error::msg(format!("Plugin.Activate answered '{first}'")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A socket that reads one request and answers `answer` (or nothing, keeping the
    /// connection open).
    fn serve_once(dir: &tempfile::TempDir, answer: Option<&'static str>) -> std::path::PathBuf {
        let path = dir.path().join("plugin.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            match answer {
                Some(a) => {
                    let _ = s.write_all(a.as_bytes()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
        });
        path
    }

    #[tokio::test]
    async fn both_drivers_announced_is_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = serve_once(
            &dir,
            Some(
                "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n\
                 {\"Implements\":[\"NetworkDriver\",\"IpamDriver\"]}",
            ),
        );
        plugin_activate(&path, SOCKET_TIMEOUT).await.unwrap();
    }

    #[tokio::test]
    async fn failures_say_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = serve_once(
            &dir,
            Some("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
        );
        let e = plugin_activate(&path, SOCKET_TIMEOUT).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "Plugin.Activate answered 'HTTP/1.1 404 Not Found'"
        );

        let e = plugin_activate(&dir.path().join("absent.sock"), SOCKET_TIMEOUT)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "connect: No such file or directory (os error 2)"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = serve_once(&dir, None);
        let e = plugin_activate(&path, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), "no answer to Plugin.Activate within 100ms");
    }
}
