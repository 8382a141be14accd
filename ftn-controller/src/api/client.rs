//! The CLI's client of the admin API: one HTTP/1.1 request per connection, through hyper.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// The longest the CLI waits for an answer (connect, request and the whole body).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// One request to the admin API; returns the status code and the body.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot reach the ftn admin API at {addr}: {e} (is `ftn run` running, and is api.listen this address?)")
        })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string())
            .header(hyper::header::USER_AGENT, "ftn-cli");
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let response = sender
            .send_request(req.body(Full::new(Bytes::from(payload)))?)
            .await?;
        let code = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        conn.abort();
        Ok((code, String::from_utf8_lossy(&bytes).into_owned()))
    };
    tokio::time::timeout(CALL_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "the ftn admin API at {addr} did not answer within {}s",
                CALL_TIMEOUT.as_secs()
            )
        })?
}

#[cfg(test)]
mod tests {
    use axum::routing::get;

    use super::*;

    /// A plain answer, a JSON body with its content type, the token header, an error status.
    #[tokio::test]
    async fn plain_and_chunked_answers_and_request_headers() {
        let app = axum::Router::new()
            .route("/plain", get(|| async { "ok" }))
            .route(
                "/echo",
                axum::routing::post(|headers: axum::http::HeaderMap, body: String| async move {
                    (
                        axum::http::StatusCode::ACCEPTED,
                        format!(
                            "{}|{}|{body}",
                            headers
                                .get("authorization")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or(""),
                            headers
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                        ),
                    )
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        assert_eq!(
            call(addr, "GET", "/plain", None, None).await.unwrap(),
            (200, "ok".to_string())
        );
        let body = serde_json::json!({"server": "p1"});
        assert_eq!(
            call(addr, "POST", "/echo", Some("t0k"), Some(&body))
                .await
                .unwrap(),
            (
                202,
                "Bearer t0k|application/json|{\"server\":\"p1\"}".to_string()
            )
        );
        assert_eq!(
            call(addr, "GET", "/missing", None, None).await.unwrap().0,
            404
        );
        server.abort();
        // Nobody listening: the error says where it tried.
        let e = call(addr, "GET", "/", None, None).await.unwrap_err();
        assert!(
            e.to_string().contains("cannot reach the ftn admin API"),
            "{e}"
        );
    }

    /// A chunked answer (what a proxy in front of the API may send), from a bare socket.
    #[tokio::test]
    async fn chunked_answers_are_decoded() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(
                b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
        });
        assert_eq!(
            call(addr, "GET", "/x", None, None).await.unwrap(),
            (404, "abcde".to_string())
        );
        server.await.unwrap();
    }
}
