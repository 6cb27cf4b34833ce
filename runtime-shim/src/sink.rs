//! Where device commands fired by rules go: an HTTP webhook (`--command-webhook
//! http://HOST:PORT/PATH`), one JSON POST per command, retried with backoff. The run loop
//! journals each command before it is sent and its delivery after.

use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::header;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// A command to deliver.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Command {
    /// The journal's id of the command.
    pub id: u64,
    pub t_ms: u64,
    pub site: String,
    pub device: String,
    pub command: String,
    pub rule: String,
}

/// Delays before the second, third, ... attempt.
pub const BACKOFF: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(5),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `host:port`.
    authority: String,
    path: String,
    timeout: Duration,
}

impl Webhook {
    /// Only `http://` (a webhook on the node or the local network; TLS is for a proxy).
    pub fn parse(url: &str, timeout: Duration) -> Result<Webhook, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("`{url}`: only http:// webhooks are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(format!(
                "`{url}`: give the host and the port (http://HOST:PORT/PATH)"
            ));
        }
        Ok(Webhook {
            authority: authority.to_string(),
            path: path.to_string(),
            timeout,
        })
    }

    /// One attempt: `Ok` on a 2xx answer.
    pub async fn post(&self, command: &Command) -> Result<(), String> {
        let work = async {
            let stream = tokio::net::TcpStream::connect(&self.authority)
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
            let conn = tokio::spawn(conn);
            let body = serde_json::to_vec(command).map_err(|e| e.to_string())?;
            let req = hyper::Request::builder()
                .method("POST")
                .uri(&self.path)
                .header(header::HOST, &self.authority)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| e.to_string())?;
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
            conn.abort();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the webhook answered {status}"))
            }
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
    }

    /// Delivers with retries: the number of attempts, and the last error if all failed.
    pub async fn deliver(&self, command: &Command) -> (u32, Result<(), String>) {
        let mut attempts = 0;
        let mut last = Ok(());
        for delay in std::iter::once(Duration::ZERO).chain(BACKOFF) {
            tokio::time::sleep(delay).await;
            attempts += 1;
            last = self.post(command).await;
            if last.is_ok() {
                break;
            }
        }
        (attempts, last)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn urls() {
        let w = Webhook::parse(
            "http://127.0.0.1:9000/kalki/commands",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(w.authority, "127.0.0.1:9000");
        assert_eq!(w.path, "/kalki/commands");
        assert_eq!(
            Webhook::parse("http://localhost:80", Duration::from_secs(1))
                .unwrap()
                .path,
            "/"
        );
        assert!(Webhook::parse("https://x:1/", Duration::from_secs(1)).is_err());
        assert!(Webhook::parse("http:///p", Duration::from_secs(1)).is_err());
        assert!(Webhook::parse("http://host/p", Duration::from_secs(1)).is_err());
    }
}
