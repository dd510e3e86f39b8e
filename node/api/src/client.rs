//! A small keep-alive HTTP/1.1 client for talking to chorus nodes (and etcd's JSON
//! gateway): the command-line client, `chorus bench`, `chorus dev` and tests use it.
//!
//! One [`HttpClient`] owns at most one TCP connection, driven by hyper's low-level
//! `client::conn::http1`, so a bench worker gets exactly one connection and no pool
//! decides for it. The connection is opened lazily and reopened when the server closed
//! it. This module also owns how a `/kv/{bucket}/{key}` path is percent-encoded; it knows
//! nothing else about the API's semantics.

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use tokio::net::TcpStream;

/// Everything except RFC 3986's unreserved characters is escaped, so a key holding `/`,
/// `?`, `#`, `%`, spaces or non-ASCII text stays exactly one path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The request timeout when the caller sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed `http://host:port` base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl {
    /// The host as written, without IPv6 brackets (what `TcpStream::connect` wants).
    pub host: String,
    /// The TCP port (80 when the URL names none).
    pub port: u16,
    /// `host:port` as written (with brackets for IPv6), for the `Host` header.
    authority: String,
}

impl BaseUrl {
    /// Accepts `http://host[:port][/]` only: no other scheme (there is no TLS on the
    /// client API), no path, query or credentials, so a typo fails here with a clear
    /// message instead of as a confusing 404 later.
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let bad = |why: &str| {
            format!("invalid node URL '{url}': {why} (expected http://host:port, e.g. http://127.0.0.1:8001)")
        };
        let Some(rest) = url.strip_prefix("http://") else {
            return Err(match url.split_once("://") {
                Some((scheme, _)) => bad(&format!("scheme '{scheme}' is not supported, only http")),
                None => bad("missing http://"),
            });
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        if authority.contains(['/', '?', '#', '@']) {
            return Err(bad("a node URL has no path, query or user"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("unclosed '[' in IPv6 address"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("expected ':port' after ']'"))?,
                    ),
                ),
            }
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad(&format!("'{p}' is not a port")))?,
        };
        Ok(BaseUrl {
            host: host.to_string(),
            port,
            authority: authority.to_string(),
        })
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

/// Percent-encodes one path segment (a bucket, a key, a member name).
pub fn encode_segment(segment: impl AsRef<[u8]>) -> String {
    let bytes = segment.as_ref();
    // "." and ".." are dot-segments that URL normalisation would remove; escaped, they
    // reach the server as the literal key.
    if bytes == b"." || bytes == b".." {
        return "%2E".repeat(bytes.len());
    }
    percent_encoding::percent_encode(bytes, SEGMENT).to_string()
}

/// `path` followed by `?name=value&...` for the parameters that are set, values escaped.
pub fn with_query(path: String, params: &[(&str, Option<&str>)]) -> String {
    let mut out = path;
    let mut separator = '?';
    for (name, value) in params {
        if let Some(value) = value {
            out.push(separator);
            out.push_str(name);
            out.push('=');
            out.push_str(&encode_segment(value));
            separator = '&';
        }
    }
    out
}

/// `/kv/{bucket}/{key}`, each part one encoded segment.
pub fn kv_path(bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> String {
    format!("/kv/{}/{}", encode_segment(bucket), encode_segment(key))
}

/// `/kv/{bucket}`, the path of a key listing.
pub fn list_path(bucket: impl AsRef<[u8]>) -> String {
    format!("/kv/{}", encode_segment(bucket))
}

/// `/ring/{bucket}/{key}`, each part one encoded segment.
pub fn ring_path(bucket: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> String {
    format!("/ring/{}/{}", encode_segment(bucket), encode_segment(key))
}

/// Why a request got no HTTP response. The split matters to `chorus bench --history`: a
/// failed connect never sent anything, while a timeout or a broken connection may have
/// delivered the request.
#[derive(Debug)]
pub enum HttpError {
    /// The TCP connection could not be opened: the request was not sent.
    Connect {
        /// The URL asked for.
        url: String,
        /// Why the connection failed.
        source: io::Error,
    },
    /// No complete response within the timeout; the request may have been delivered.
    Timeout {
        /// The URL asked for.
        url: String,
        /// The timeout that passed.
        after: Duration,
    },
    /// The connection failed mid-request; the request may have been delivered.
    Transport {
        /// The URL asked for.
        url: String,
        /// What failed, as hyper said it.
        message: String,
    },
    /// The request could not be built (e.g. a header value with a newline): not sent.
    Request(String),
}

impl HttpError {
    /// A short label for counting errors by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Connect { .. } => "connect",
            HttpError::Timeout { .. } => "timeout",
            HttpError::Transport { .. } => "transport",
            HttpError::Request(_) => "request",
        }
    }

    /// True when the request certainly did not reach the server.
    pub fn not_sent(&self) -> bool {
        matches!(self, HttpError::Connect { .. } | HttpError::Request(_))
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Connect { url, source }
                if source.kind() == io::ErrorKind::ConnectionRefused =>
            {
                write!(f, "cannot connect to {url}: connection refused (is a chorus node running there? use --node or CHORUS_NODE)")
            }
            HttpError::Connect { url, source } => write!(f, "cannot connect to {url}: {source}"),
            HttpError::Timeout { url, after } => {
                write!(f, "{url} did not answer within {} ms", after.as_millis())
            }
            HttpError::Transport { url, message } => {
                write!(f, "connection to {url} failed: {message}")
            }
            HttpError::Request(message) => write!(f, "invalid request: {message}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// A complete response: status, headers and the whole body.
#[derive(Debug)]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Every response header.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Response {
    /// A header's value, when present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body parsed as JSON, or why it is not JSON.
    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "the server sent invalid JSON ({e}) with status {}",
                self.status
            )
        })
    }

    /// The human sentence of an error answer: the `message` of the API's error JSON,
    /// else the status and whatever text came back.
    pub fn error_message(&self) -> String {
        if let Ok(json) = self.json() {
            if let Some(message) = json.get("message").and_then(|m| m.as_str()) {
                return message.to_string();
            }
        }
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.is_empty() {
            format!("the server answered HTTP {}", self.status)
        } else {
            format!("the server answered HTTP {}: {text}", self.status)
        }
    }
}

/// A kept-alive connection idle this long is given a turn to notice a close first.
const IDLE_CHECK_AFTER: Duration = Duration::from_millis(100);

/// One keep-alive connection to one server, reopened on demand.
pub struct HttpClient {
    base: BaseUrl,
    host_header: HeaderValue,
    timeout: Duration,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// When the connection last carried a request (see `connection`).
    last_used: std::time::Instant,
}

impl HttpClient {
    /// A client for `base`, with [`DEFAULT_TIMEOUT`]; it connects on its first request.
    pub fn new(base: BaseUrl) -> HttpClient {
        let host_header = HeaderValue::from_str(&base.authority)
            .expect("a parsed authority is a valid header value");
        HttpClient {
            base,
            host_header,
            timeout: DEFAULT_TIMEOUT,
            sender: None,
            last_used: std::time::Instant::now(),
        }
    }

    /// Bounds each request as a whole: connecting, sending and reading the body.
    pub fn with_timeout(mut self, timeout: Duration) -> HttpClient {
        self.timeout = timeout;
        self
    }

    /// The server this client talks to.
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// `GET path`.
    pub async fn get(&mut self, path: &str) -> Result<Response, HttpError> {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&mut self, path: &str, body: Bytes) -> Result<Response, HttpError> {
        self.request(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body,
        )
        .await
    }

    /// Sends one request on the kept-alive connection (opening it if needed) and reads the
    /// whole response. `path` is the origin-form target, already encoded.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, HttpError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, self.host_header.clone());
        for (name, value) in headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| HttpError::Request(format!("header name '{name}': {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| HttpError::Request(format!("{name} value: {e}")))?;
            builder = builder.header(name, value);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| HttpError::Request(e.to_string()))?;
        match tokio::time::timeout(self.timeout, self.send(request)).await {
            Ok(result) => result,
            Err(_) => {
                // The late response would otherwise be read as the answer to the next request.
                self.sender = None;
                Err(HttpError::Timeout {
                    url: self.base.to_string(),
                    after: self.timeout,
                })
            }
        }
    }

    async fn send(&mut self, request: Request<Full<Bytes>>) -> Result<Response, HttpError> {
        let mut request = Some(request);
        // Two attempts: a kept-alive connection the server closed while idle is only
        // noticed when used; the request was then never sent, so sending it again on a
        // fresh connection is safe whatever the method.
        for attempt in 0..2 {
            let req = request
                .take()
                .expect("the request is put back before retrying");
            let sender = self.connection().await?;
            if sender.ready().await.is_err() {
                self.sender = None;
                request = Some(req);
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(response) => return self.read(response).await,
                Err(mut e) => {
                    self.sender = None;
                    match e.take_message() {
                        Some(unsent) if attempt == 0 => request = Some(unsent),
                        _ => return Err(self.transport(e.into_error())),
                    }
                }
            }
        }
        Err(HttpError::Transport {
            url: self.base.to_string(),
            message: "the connection closed twice before the request was sent".into(),
        })
    }

    async fn read(
        &mut self,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Response, HttpError> {
        let (parts, body) = response.into_parts();
        match body.collect().await {
            Ok(collected) => Ok(Response {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body: collected.to_bytes(),
            }),
            Err(e) => {
                self.sender = None;
                Err(self.transport(e))
            }
        }
    }

    async fn connection(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, HttpError> {
        let idle = std::mem::replace(&mut self.last_used, std::time::Instant::now()).elapsed();
        if self.sender.is_some() && idle >= IDLE_CHECK_AFTER {
            // On a current-thread runtime driven only while a request runs (the tests'
            // blocking helpers), the connection task has not yet seen a close the server
            // sent while the connection was idle (its header timeout); one turn lets it,
            // so the request goes on a fresh connection instead of into a closed one.
            // Busy connections (the bench) skip the extra turn.
            tokio::task::yield_now().await;
        }
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_none() {
            let connect_error = |source| HttpError::Connect {
                url: self.base.to_string(),
                source,
            };
            let stream = TcpStream::connect((self.base.host.as_str(), self.base.port))
                .await
                .map_err(connect_error)?;
            // Requests are small and latency-bound; Nagle would add delayed-ACK stalls.
            stream.set_nodelay(true).map_err(connect_error)?;
            let (sender, connection) = http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| self.transport(e))?;
            // The connection task ends when `sender` is dropped or the peer closes.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            self.sender = Some(sender);
        }
        Ok(self.sender.as_mut().expect("set above"))
    }

    fn transport(&self, e: hyper::Error) -> HttpError {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        HttpError::Transport {
            url: self.base.to_string(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_escape_everything_but_unreserved() {
        assert_eq!(encode_segment("abc-._~XYZ09"), "abc-._~XYZ09");
        assert_eq!(encode_segment("a/b"), "a%2Fb");
        assert_eq!(encode_segment("hello world"), "hello%20world");
        assert_eq!(encode_segment("100%?#&=+"), "100%25%3F%23%26%3D%2B");
        assert_eq!(encode_segment("ключ✓"), "%D0%BA%D0%BB%D1%8E%D1%87%E2%9C%93");
        assert_eq!(encode_segment("."), "%2E");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("..."), "...");
        assert_eq!(kv_path("my bucket", "a/b"), "/kv/my%20bucket/a%2Fb");
        assert_eq!(ring_path("b", "ü"), "/ring/b/%C3%BC");
    }

    #[test]
    fn segments_round_trip() {
        for s in [
            "a/b/c",
            " lead and trail ",
            "ключ",
            "%2F",
            "emoji 🎉",
            "tab\tnl\n",
        ] {
            let encoded = encode_segment(s);
            assert!(!encoded.contains('/'));
            assert_eq!(
                percent_encoding::percent_decode_str(&encoded)
                    .decode_utf8()
                    .unwrap(),
                s
            );
        }
    }

    #[test]
    fn query_skips_unset_parameters() {
        let path = with_query(
            kv_path("b", "k"),
            &[("r", Some("quorum")), ("w", None), ("timeout", Some("500"))],
        );
        assert_eq!(path, "/kv/b/k?r=quorum&timeout=500");
        assert_eq!(with_query("/x".into(), &[("r", None)]), "/x");
    }

    #[test]
    fn base_urls_parse() {
        let u = BaseUrl::parse("http://127.0.0.1:8001").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 8001));
        assert_eq!(u.to_string(), "http://127.0.0.1:8001");
        assert_eq!(
            BaseUrl::parse("http://localhost:8001/")
                .unwrap()
                .to_string(),
            "http://localhost:8001"
        );
        assert_eq!(BaseUrl::parse("http://example.com").unwrap().port, 80);
        let v6 = BaseUrl::parse("http://[::1]:8002").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8002));
        assert_eq!(v6.to_string(), "http://[::1]:8002");
    }

    #[test]
    fn bad_base_urls_say_why() {
        let err = |u: &str| BaseUrl::parse(u).unwrap_err();
        assert!(err("https://127.0.0.1:8001").contains("scheme 'https' is not supported"));
        assert!(err("127.0.0.1:8001").contains("missing http://"));
        assert!(err("http://").contains("no host"));
        assert!(err("http://:8001").contains("no host"));
        assert!(err("http://h:port").contains("'port' is not a port"));
        assert!(err("http://h:70000").contains("is not a port"));
        assert!(err("http://h:0").contains("is not a port"));
        assert!(err("http://h:1/kv").contains("no path"));
        assert!(err("http://[::1").contains("unclosed"));
        assert!(err("redis://h:1").contains("expected http://host:port"));
    }

    #[test]
    fn error_messages_prefer_the_api_message() {
        let response = |status, body: &str| Response {
            status,
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
        };
        assert_eq!(
            response(
                503,
                r#"{"error":"quorum_unavailable","message":"2 needed, 1 replied"}"#
            )
            .error_message(),
            "2 needed, 1 replied"
        );
        assert_eq!(
            response(502, "bad gateway").error_message(),
            "the server answered HTTP 502: bad gateway"
        );
        assert_eq!(
            response(500, "").error_message(),
            "the server answered HTTP 500"
        );
    }

    #[tokio::test]
    async fn refused_connection_names_the_url() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut client =
            HttpClient::new(BaseUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap());
        let e = client.get("/health").await.unwrap_err();
        assert!(e.not_sent());
        assert!(
            e.to_string().contains(&format!("http://127.0.0.1:{port}")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn keeps_the_connection_alive_and_reconnects() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Serves two requests on the first connection, then closes it; serves one more on the next.
        let server = tokio::spawn(async move {
            let mut accepted = 0;
            for per_connection in [2, 1] {
                let (mut stream, _) = listener.accept().await.unwrap();
                accepted += 1;
                for _ in 0..per_connection {
                    let mut buf = vec![0u8; 4096];
                    let mut read = 0;
                    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        read += stream.read(&mut buf[read..]).await.unwrap();
                    }
                    let head = String::from_utf8_lossy(&buf[..read]).to_string();
                    assert!(head.contains("host: 127.0.0.1:"), "{head}");
                    stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-chorus-context: abc\r\n\r\nok").await.unwrap();
                }
            }
            accepted
        });
        let mut client =
            HttpClient::new(BaseUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap());
        for _ in 0..3 {
            let r = client.get("/kv/b/k").await.unwrap();
            assert_eq!(
                (r.status, &r.body[..], r.header("X-Chorus-Context")),
                (200, &b"ok"[..], Some("abc"))
            );
            // Let the closed connection be noticed, as it would be between bench operations.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(server.await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _hold = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(stream);
        });
        let mut client =
            HttpClient::new(BaseUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap())
                .with_timeout(Duration::from_millis(100));
        let e = client.get("/health").await.unwrap_err();
        assert_eq!(e.kind(), "timeout");
        assert!(!e.not_sent());
    }
}
