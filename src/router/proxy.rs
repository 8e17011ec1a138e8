//! HTTP client of the shards: one pooled `reqwest` client, every call bounded
//! by `router.shard_timeout`, answers returned raw (status + body bytes) so the
//! router can pass a shard's JSON on without re-encoding it.

use std::time::Duration;

use axum::body::Bytes;

/// Why a shard could not answer (the router then falls back to the store).
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No complete answer within the deadline.
    #[error("shard {url} did not answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// Connection refused, reset, DNS, ...
    #[error("shard {url} is unreachable: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The shard base URL plus path is not a URL.
    #[error("bad shard URL `{0}`")]
    BadUrl(String),
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// A shard's answer: status and raw body.
#[derive(Debug, Clone)]
pub struct ShardReply {
    pub status: u16,
    pub body: Bytes,
}

impl ShardReply {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Pooled HTTP client of the shards; cheap to clone.
#[derive(Debug, Clone)]
pub struct ShardClient {
    http: reqwest::Client,
    timeout: Duration,
}

impl ShardClient {
    /// A client whose calls give up after `timeout`. Proxy variables are ignored:
    /// shards are always reached directly.
    pub fn new(timeout: Duration) -> Result<Self, ProxyError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .pool_idle_timeout(Duration::from_secs(60))
            .connect_timeout(timeout)
            .build()
            .map_err(ProxyError::Client)?;
        Ok(Self { http, timeout })
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// GET `base_url` + `path` with `query`, within the client's deadline.
    pub async fn get(
        &self,
        base_url: &str,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<ShardReply, ProxyError> {
        self.get_within(base_url, path, query, self.timeout).await
    }

    /// Like [`ShardClient::get`] with an explicit deadline (health checks allow more).
    pub async fn get_within(
        &self,
        base_url: &str,
        path: &str,
        query: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<ShardReply, ProxyError> {
        let url = shard_url(base_url, path, query)?;
        let call = async {
            // Continue the caller's trace on the shard (no-op unless exporting).
            let mut headers = reqwest::header::HeaderMap::new();
            crate::telemetry::inject_trace_headers(&mut headers);
            let response = self.http.get(url.clone()).headers(headers).send().await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>(ShardReply { status, body })
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(source)) => Err(ProxyError::Unreachable {
                url: base_url.to_string(),
                source,
            }),
            Err(_) => Err(ProxyError::Timeout {
                url: base_url.to_string(),
                timeout,
            }),
        }
    }
}

/// `base_url` + `path` with the query encoded (tokens may hold `&`, `#`, spaces, UTF-8).
pub fn shard_url(
    base_url: &str,
    path: &str,
    query: &[(&str, &str)],
) -> Result<reqwest::Url, ProxyError> {
    let mut url = reqwest::Url::parse(&format!("{base_url}{path}"))
        .map_err(|_| ProxyError::BadUrl(format!("{base_url}{path}")))?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query.iter().copied());
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_tokens() {
        let url = shard_url("http://127.0.0.1:1", "/stats", &[("token", "A&B #é")]).unwrap();
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/stats?token=A%26B+%23%C3%A9"
        );
        let pairs: Vec<_> = url.query_pairs().collect();
        assert_eq!(pairs[0].1, "A&B #é");
        assert!(shard_url("not a url", "/x", &[]).is_err());
    }

    #[tokio::test]
    async fn unreachable_and_timeout_are_errors() {
        let client = ShardClient::new(Duration::from_millis(200)).unwrap();
        // A port that was just free: connection refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let err = client
            .get(&format!("http://127.0.0.1:{port}"), "/healthz", &[])
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Unreachable { .. }), "{err}");
        // A listener that accepts but never answers: timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = silent.accept().await {
                held.push(socket);
            }
        });
        let err = client
            .get(&format!("http://{addr}"), "/healthz", &[])
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyError::Timeout { .. }), "{err}");
        hold.abort();
    }
}
