//! TLS and HTTP/2 at the edge, end to end on the real binaries: certificates
//! added with `ingressctl cert add` (made with rcgen), clients on rustls
//! (tokio-rustls, reqwest, the `h2` crate) and curl.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::binary::Ingress;
use support::certs::{handshake, handshake_unverified, Leaf, TestCa};
use support::scripted::ScriptedUpstream;
use support::Upstream;
use tokio::io::AsyncWriteExt;

const APEX: &str = "shop.example.com";
const PREVIEW: &str = "pr-1.shop.example.com";

/// An ingress with a `[tls]` listener, app `shop` on `shop.example.com` served
/// by `upstream`, and a certificate for `shop.example.com` + `*.shop.example.com`.
struct Edge {
    ingress: Ingress,
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl Edge {
    fn start(upstream: SocketAddr, proxy_keys: &str, tls_keys: &str) -> Edge {
        let dir = tempfile::tempdir().expect("temp dir");
        let ingress = Ingress::start_tls(dir.path(), proxy_keys, tls_keys, "");
        ingress.ctl(&["app", "create", "shop"]).expect_ok();
        ingress
            .ctl(&["route", "add", APEX, "--app", "shop"])
            .expect_ok();
        ingress
            .ctl(&["deploy", "shop", "--upstream", &upstream.to_string()])
            .expect_ok();
        let ca = TestCa::new();
        let edge = Edge { ingress, ca, dir };
        edge.add_cert("shop", &[APEX, "*.shop.example.com"]);
        edge
    }

    fn tls(&self) -> SocketAddr {
        self.ingress.tls.expect("a TLS listener")
    }

    fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        self.ca.leaf(self.dir.path(), file, names, false)
    }

    /// `ingressctl cert add` of a new leaf for `names` under `name`.
    fn add_cert(&self, name: &str, names: &[&str]) -> Leaf {
        let leaf = self.leaf(name, names);
        self.ingress
            .ctl(&[
                "cert",
                "add",
                "--cert",
                &leaf.cert_path.display().to_string(),
                "--key",
                &leaf.key_path.display().to_string(),
                "--name",
                name,
            ])
            .expect_ok();
        leaf
    }

    /// A reqwest client trusting the test CA, sending `hosts` to the TLS port.
    fn client(&self, hosts: &[&str], http2: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca.pem.as_bytes()).expect("ca"),
            )
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10));
        for host in hosts {
            builder = builder.resolve(host, self.tls());
        }
        if !http2 {
            builder = builder.http1_only();
        }
        builder.build().expect("client")
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.tls().port())
    }
}

/// The DNS names of a DER leaf.
fn names_of(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("leaf parses");
    let san = cert
        .subject_alternative_name()
        .expect("san")
        .expect("has san");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

fn der_of(leaf: &Leaf) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(leaf.cert_pem.as_bytes())
        .expect("leaf pem")
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_then_wildcard_and_rejects_what_nothing_covers() {
    let upstream = Upstream::start("shop").await;
    let edge = Edge::start(upstream.addr, "", "");
    let exact = edge.add_cert("pr-9", &["pr-9.shop.example.com"]);
    let shop_names = vec![APEX.to_string(), "*.shop.example.com".to_string()];

    let (_, apex) = handshake(&edge.ca, edge.tls(), APEX, &[b"http/1.1"])
        .await
        .expect("apex");
    assert_eq!(
        names_of(&apex),
        shop_names,
        "the apex gets the shop certificate"
    );
    let (_, preview) = handshake(&edge.ca, edge.tls(), PREVIEW, &[])
        .await
        .expect("preview");
    assert_eq!(
        names_of(&preview),
        shop_names,
        "a preview gets the wildcard"
    );
    let (_, pr9) = handshake(&edge.ca, edge.tls(), "pr-9.shop.example.com", &[])
        .await
        .expect("exact");
    assert_eq!(
        pr9,
        der_of(&exact),
        "an exact certificate beats the wildcard"
    );

    // Two labels under the wildcard, an unknown name: the handshake is refused.
    for host in ["a.pr-1.shop.example.com", "other.example.org"] {
        let refused = handshake(&edge.ca, edge.tls(), host, &[]).await;
        let error = refused.err().unwrap_or_else(|| panic!("{host} was served"));
        assert!(
            error.contains("AccessDenied")
                || error.contains("access denied")
                || error.contains("alert"),
            "{host}: {error}"
        );
    }
    let text = edge.ingress.metrics_text().await;
    assert!(
        text.contains("ingress_tls_handshakes_total{result=\"no_cert\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("ingress_tls_handshakes_total{result=\"ok\"} 3"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_and_no_sni_get_the_default_certificate_when_configured() {
    let upstream = Upstream::start("shop").await;
    let edge = Edge::start(
        upstream.addr,
        "",
        "unknown_sni = \"default\"\ndefault_cert = \"fallback\"",
    );
    let fallback = der_of(&edge.add_cert("fallback", &["fallback.example.net"]));
    let (mut stream, leaf) = handshake_unverified(edge.tls(), Some("unknown.example.org"))
        .await
        .expect("an unknown SNI is served");
    assert_eq!(leaf, fallback);
    // Then routing as usual: nothing is routed there (and it is the host the
    // client connected for, so it is not misdirected).
    let status = get_over(&mut stream, "unknown.example.org", "/").await;
    assert_eq!(status.0, 404, "{}", status.1);
    let (_, leaf) = handshake_unverified(edge.tls(), None)
        .await
        .expect("no SNI is served");
    assert_eq!(leaf, fallback);
    // A known name still gets its own certificate.
    let (_, apex) = handshake_unverified(edge.tls(), Some(APEX))
        .await
        .expect("apex");
    assert_eq!(names_of(&apex), [APEX, "*.shop.example.com"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_sni_is_refused_without_a_default() {
    let upstream = Upstream::start("shop").await;
    let edge = Edge::start(upstream.addr, "", "");
    assert!(handshake_unverified(edge.tls(), None).await.is_err());
}

/// One HTTP/1.1 GET over `stream`; (status, whole answer).
async fn get_over(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    host: &str,
    path: &str,
) -> (u16, String) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut pending = Vec::new();
    let answer = support::raw::read_response(stream, &mut pending, Duration::from_secs(10))
        .await
        .expect("an answer");
    (answer.status, answer.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_h2_or_http1_and_requests_route_over_both() {
    let upstream = Upstream::start("shop").await;
    let edge = Edge::start(upstream.addr, "", "");
    let (h2, _) = handshake(&edge.ca, edge.tls(), APEX, &[b"h2", b"http/1.1"])
        .await
        .expect("h2");
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (h1, _) = handshake(&edge.ca, edge.tls(), APEX, &[b"http/1.1"])
        .await
        .expect("h1");
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut none, _) = handshake(&edge.ca, edge.tls(), APEX, &[])
        .await
        .expect("no alpn");
    assert_eq!(none.get_ref().1.alpn_protocol(), None);
    assert_eq!(get_over(&mut none, APEX, "/").await.0, 200);

    for http2 in [true, false] {
        let client = edge.client(&[APEX, "pr-404.shop.example.com"], http2);
        let response = client
            .get(edge.url(APEX, "/hello"))
            .send()
            .await
            .expect("get");
        let expected = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        assert_eq!(response.version(), expected);
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-ingress-version"));
        let body: serde_json::Value = response.json().await.expect("json");
        assert_eq!(body["path"], "/hello");
        assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
        let authority = format!("{APEX}:{}", edge.tls().port());
        assert_eq!(body["headers"]["x-forwarded-host"], *authority, "{body}");
        assert_eq!(body["headers"]["host"], *authority, "{body}");
        // An error answer arrives whole over both.
        let missing = client
            .get(edge.url("pr-404.shop.example.com", "/"))
            .header("accept", "application/json")
            .send()
            .await
            .expect("get");
        assert_eq!(missing.version(), expected);
        assert_eq!(missing.status(), 404);
        let body: serde_json::Value = missing.json().await.expect("json error body");
        assert_eq!(body["status"], 404, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_only_when_enabled() {
    let upstream = Upstream::start("shop").await;
    for enabled in [true, false] {
        let edge = Edge::start(
            upstream.addr,
            &format!("h2c = {enabled}"),
            "redirect_http = false",
        );
        let url = format!("http://{APEX}:{}/", edge.ingress.proxy.port());
        let h2c = reqwest::Client::builder()
            .http2_prior_knowledge()
            .resolve(APEX, edge.ingress.proxy)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let answer = h2c.get(&url).send().await;
        if enabled {
            let answer = answer.expect("h2c answered");
            assert_eq!(answer.version(), reqwest::Version::HTTP_2);
            assert_eq!(answer.status(), 200);
        } else {
            assert!(answer.is_err(), "h2c was served with proxy.h2c = false");
        }
        // HTTP/1.1 on the same port either way, including a short request.
        let plain = support::raw::send_raw(
            edge.ingress.proxy,
            format!("GET / HTTP/1.1\r\nHost: {APEX}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(plain.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_for_hosts_with_a_certificate_are_redirected_with_308() {
    let upstream = Upstream::start("shop").await;
    let edge = Edge::start(upstream.addr, "", "");
    edge.ingress
        .ctl(&["route", "add", "plain.example.net", "--app", "shop"])
        .expect_ok();
    let port = edge.tls().port();
    for method in ["GET", "POST"] {
        let answer = support::raw::send_raw(
            edge.ingress.proxy,
            format!("{method} /a/b?c=1&d=%20 HTTP/1.1\r\nHost: Shop.Example.com:80\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi").as_bytes(),
        )
        .await;
        assert_eq!(answer.status, 308, "{method}: {}", answer.text());
        assert_eq!(
            answer.header("location"),
            Some(format!("https://shop.example.com:{port}/a/b?c=1&d=%20").as_str()),
            "{method}"
        );
    }
    let preview = support::raw::send_raw(
        edge.ingress.proxy,
        format!("GET / HTTP/1.1\r\nHost: {PREVIEW}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(preview.status, 308);
    // ACME validations and hosts without a certificate are served over plain HTTP.
    for (host, path) in [
        (APEX, "/.well-known/acme-challenge/token-1"),
        ("plain.example.net", "/"),
    ] {
        let answer = support::raw::send_raw(
            edge.ingress.proxy,
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(answer.status, 200, "{host}{path}: {}", answer.text());
        assert_eq!(answer.header("strict-transport-security"), None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_http_false_serves_plain_requests_and_hsts_is_only_on_tls() {
    let upstream = Upstream::start("shop").await;
    let edge = Edge::start(
        upstream.addr,
        "",
        "redirect_http = false\nhsts = \"max-age=600\"",
    );
    let plain = support::raw::send_raw(
        edge.ingress.proxy,
        format!("GET / HTTP/1.1\r\nHost: {APEX}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("strict-transport-security"), None);
    for http2 in [true, false] {
        let client = edge.client(&[APEX, "pr-404.shop.example.com"], http2);
        for _ in 0..2 {
            let served = client.get(edge.url(APEX, "/")).send().await.expect("get");
            assert_eq!(served.status(), 200);
            assert_eq!(
                served
                    .headers()
                    .get("strict-transport-security")
                    .map(|v| v.as_bytes()),
                Some(&b"max-age=600"[..]),
                "http2 = {http2}"
            );
        }
        let missing = client
            .get(edge.url("pr-404.shop.example.com", "/"))
            .send()
            .await
            .expect("get");
        assert_eq!(missing.status(), 404);
        assert!(missing.headers().contains_key("strict-transport-security"));
    }
}

/// An HTTP/2 connection over TLS for `sni`, driven on a task of its own.
async fn h2_connect(edge: &Edge, sni: &str) -> h2::client::SendRequest<Bytes> {
    let (stream, _) = handshake(&edge.ca, edge.tls(), sni, &[b"h2"])
        .await
        .expect("handshake");
    let (send, connection) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

/// Sends `request` (with `body` chunks, the last one ending the stream) and
/// returns the status, the `x-ingress-cold-start` header and the body.
async fn h2_exchange(
    send: &mut h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    body: &[&[u8]],
) -> (u16, Option<String>, String) {
    let mut ready = send.clone().ready().await.expect("h2 ready");
    let (response, mut stream) = ready
        .send_request(request, body.is_empty())
        .expect("send request");
    for (i, chunk) in body.iter().enumerate() {
        stream
            .send_data(Bytes::copy_from_slice(chunk), i + 1 == body.len())
            .expect("send data");
    }
    let response = tokio::time::timeout(Duration::from_secs(15), response)
        .await
        .expect("answered in time")
        .expect("response");
    let status = response.status().as_u16();
    let cold = response
        .headers()
        .get("x-ingress-cold-start")
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let mut body = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, cold, String::from_utf8_lossy(&text).into_owned())
}

fn get(host: &str, path: &str) -> http::Request<()> {
    http::Request::get(format!("https://{host}{path}"))
        .body(())
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_reaches_new_handshakes_while_open_connections_keep_serving() {
    let upstream = Upstream::start("shop").await;
    let edge = Edge::start(upstream.addr, "", "");
    let mut h2 = h2_connect(&edge, APEX).await;
    assert_eq!(h2_exchange(&mut h2, get(APEX, "/before"), &[]).await.0, 200);
    let (mut h1, old) = handshake(&edge.ca, edge.tls(), APEX, &[b"http/1.1"])
        .await
        .expect("h1");
    assert_eq!(get_over(&mut h1, APEX, "/before").await.0, 200);

    let replaced = der_of(&edge.add_cert("shop", &[APEX, "*.shop.example.com"]));
    assert_ne!(replaced, old);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (_, now) = handshake(&edge.ca, edge.tls(), PREVIEW, &[])
            .await
            .expect("handshake");
        if now == replaced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new handshakes still get the old certificate after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connections opened before the swap were neither reset nor closed.
    for i in 0..3 {
        assert_eq!(
            h2_exchange(&mut h2, get(APEX, &format!("/after-{i}")), &[])
                .await
                .0,
            200
        );
        assert_eq!(get_over(&mut h1, APEX, &format!("/after-{i}")).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_outside_the_connections_certificate_gets_421() {
    let upstream = Upstream::start("shop").await;
    let edge = Edge::start(upstream.addr, "", "");
    edge.add_cert("other", &["other.example.org"]);
    edge.ingress
        .ctl(&["route", "add", "other.example.org", "--app", "shop"])
        .expect_ok();
    let mut h2 = h2_connect(&edge, PREVIEW).await;
    let (status, _, body) = h2_exchange(&mut h2, get("other.example.org", "/"), &[]).await;
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("other.example.org"), "{body}");
    // Any host the wildcard covers may share the connection (HTTP/2 coalescing).
    let (status, _, _) = h2_exchange(&mut h2, get(APEX, "/"), &[]).await;
    assert_eq!(status, 200, "the certificate names the apex too");
    let (status, _, _) = h2_exchange(&mut h2, get("pr-2.shop.example.com", "/"), &[]).await;
    assert_eq!(status, 404, "a covered host is routed (no such preview)");
    // HTTP/1.1 over TLS too.
    let (mut h1, _) = handshake(&edge.ca, edge.tls(), APEX, &[b"http/1.1"])
        .await
        .expect("h1");
    let (status, text) = get_over(&mut h1, "other.example.org", "/").await;
    assert_eq!(status, 421, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_to_http1_upstreams_gets_one_cookie_field_and_one_final_chunk() {
    let upstream = ScriptedUpstream::start().await;
    let edge = Edge::start(upstream.addr, "", "");
    let mut h2 = h2_connect(&edge, APEX).await;
    // cloudflare/pingora#892: two cookie fields reach HTTP/1.1 as one.
    let request = http::Request::get(format!("https://{APEX}/cookies"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(())
        .expect("request");
    assert_eq!(h2_exchange(&mut h2, request, &[]).await.0, 200);
    // cloudflare/pingora#935: a body of unknown length ending with an empty
    // DATA frame, then more requests on the pooled upstream connection.
    let post = http::Request::post(format!("https://{APEX}/upload"))
        .body(())
        .expect("request");
    let (status, _, body) = h2_exchange(&mut h2, post, &[b"hello", b""]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("body=hello"), "{body}");
    for i in 0..3 {
        let (status, _, body) = h2_exchange(&mut h2, get(APEX, &format!("/next-{i}")), &[]).await;
        assert_eq!(status, 200, "{body}");
    }
    let received = upstream.take();
    let cookies: Vec<_> = received[0]
        .headers
        .iter()
        .filter(|(name, _)| name == "cookie")
        .collect();
    assert_eq!(cookies, [&("cookie".to_string(), "a=1; b=2".to_string())]);
    let targets: Vec<_> = received.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        ["/cookies", "/upload", "/next-0", "/next-1", "/next-2"]
    );
    assert_eq!(received[1].body, b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_upgrade_over_tls() {
    use futures_util::{SinkExt, StreamExt};
    let upstream = Upstream::start("shop").await;
    let echo = support::WebSocketEcho::start().await;
    let edge = Edge::start(upstream.addr, "", "");
    edge.ingress
        .ctl(&[
            "deploy",
            "shop",
            "--upstream",
            &echo.addr.to_string(),
            "--ephemeral",
            "ws",
        ])
        .expect_ok();
    let (stream, _) = handshake(
        &edge.ca,
        edge.tls(),
        "ws.shop.example.com",
        &[b"h2", b"http/1.1"],
    )
    .await
    .expect("handshake");
    // A WebSocket client offers only HTTP/1.1 in practice; h2 would be picked
    // here, so connect again the way browsers do for wss.
    drop(stream);
    let (stream, _) = handshake(&edge.ca, edge.tls(), "ws.shop.example.com", &[b"http/1.1"])
        .await
        .expect("handshake");
    let (mut socket, response) =
        tokio_tungstenite::client_async("wss://ws.shop.example.com/socket", stream)
            .await
            .expect("upgrade");
    assert_eq!(response.status(), 101);
    socket
        .send(tokio_tungstenite::tungstenite::Message::text("over tls"))
        .await
        .expect("send");
    let echoed = tokio::time::timeout(Duration::from_secs(5), socket.next())
        .await
        .expect("echo in time")
        .expect("a message")
        .expect("no error");
    assert_eq!(echoed.into_text().expect("text").as_str(), "over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_open_h2_streams_finish() {
    let upstream = Upstream::start("shop").await;
    let mut edge = Edge::start(upstream.addr, "", "");
    let mut h2 = h2_connect(&edge, APEX).await;
    assert_eq!(h2_exchange(&mut h2, get(APEX, "/"), &[]).await.0, 200);
    let slow = tokio::spawn(async move {
        let answers = futures_util::future::join_all((0..3).map(|_| {
            let mut h2 = h2.clone();
            async move { h2_exchange(&mut h2, get(APEX, "/slow"), &[]).await.0 }
        }))
        .await;
        answers
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = edge.ingress.pid().expect("running") as i32;
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let answers = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(answers, [200, 200, 200]);
    let status = edge.ingress.terminate();
    assert!(status.success() || status.code().is_some(), "{status:?}");
}

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/app.py");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_h2_request_wakes_its_preview_and_a_reset_frees_the_waiter() {
    let upstream = Upstream::start("shop").await;
    let edge = Edge::start(upstream.addr, "", "");
    let dir = edge.dir.path();
    let command = |name: &str| {
        format!(
            "exec python3 {APP} --starts {} --pid {} --delay-ms 600",
            dir.join(format!("{name}.starts")).display(),
            dir.join(format!("{name}.pid")).display()
        )
    };
    for (label, name) in [("pr-1", "one"), ("pr-2", "two")] {
        edge.ingress
            .ctl(&[
                "deploy",
                "shop",
                "--command",
                &command(name),
                "--ephemeral",
                label,
                "--branch",
                label,
            ])
            .expect_ok();
    }
    let mut h2 = h2_connect(&edge, PREVIEW).await;
    let (status, cold, body) = h2_exchange(&mut h2, get(PREVIEW, "/"), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(cold.is_some(), "a held request says how long it waited");

    // A stream reset while held: the waiter is freed and the start goes on.
    let mut ready = h2.clone().ready().await.expect("ready");
    let (response, _stream) = ready
        .send_request(get("pr-2.shop.example.com", "/"), true)
        .expect("send");
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(response);
    drop(_stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = edge.ingress.metrics_text().await;
        if text.contains("ingress_wake_requests_total{result=\"client_gone\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reset was not noticed:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("two.pid").exists()
        || std::fs::read_to_string(dir.join("two.starts"))
            .unwrap_or_default()
            .lines()
            .count()
            != 1
    {
        assert!(Instant::now() < deadline, "the start did not go on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, _) = h2_exchange(&mut h2, get("pr-2.shop.example.com", "/"), &[]).await;
    assert_eq!(status, 200);
}

#[test]
fn curl_speaks_http2_to_the_edge() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let upstream = rt.block_on(Upstream::start("shop"));
    let edge = Edge::start(upstream.addr, "", "");
    let ca = edge.ca.write(edge.dir.path());
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "--cacert",
            &ca.display().to_string(),
            "--resolve",
            &format!("{PREVIEW}:{}:127.0.0.1", edge.tls().port()),
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &edge.url(PREVIEW, "/"),
        ])
        .output()
        .expect("run curl");
    let printed = String::from_utf8_lossy(&out.stdout);
    // No such preview: 404, over HTTP/2, with a verified certificate.
    assert_eq!(printed, "2 404", "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_never_sends_its_preface_is_cut_after_the_header_timeout() {
    let upstream = Upstream::start("shop").await;
    let edge = Edge::start(upstream.addr, "header_timeout = \"1s\"", "");
    let (mut silent, _) = handshake(&edge.ca, edge.tls(), APEX, &[b"h2"])
        .await
        .expect("h2");
    assert_eq!(silent.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // The server's SETTINGS may arrive first; then the connection must end.
    let started = Instant::now();
    let mut sink = [0u8; 1024];
    let ended = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match tokio::io::AsyncReadExt::read(&mut silent, &mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "a silent h2 connection was still open after 6 s"
    );
    assert!(started.elapsed() >= Duration::from_millis(900));
    // A client that does speak keeps being served.
    let mut h2 = h2_connect(&edge, APEX).await;
    assert_eq!(h2_exchange(&mut h2, get(APEX, "/"), &[]).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_whose_client_stops_reading_is_cut_after_the_write_timeout() {
    let upstream = ScriptedUpstream::start().await;
    let edge = Edge::start(upstream.addr, "write_timeout = \"1s\"", "");
    // A client whose receive window is tiny and never opened again.
    let (stream, _) = handshake(&edge.ca, edge.tls(), APEX, &[b"h2"])
        .await
        .expect("handshake");
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(1024)
        .handshake::<_, Bytes>(stream)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut ready = send.ready().await.expect("ready");
    let post = http::Request::post(format!("https://{APEX}/big"))
        .body(())
        .expect("request");
    let (response, mut body) = ready.send_request(post, false).expect("send");
    // The scripted upstream echoes the body: 256 KiB back, far past the window.
    body.send_data(Bytes::from(vec![b'x'; 256 * 1024]), true)
        .expect("send data");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("a response head")
        .expect("response");
    assert_eq!(response.status(), 200);
    let mut data = response.into_body();
    // Read the first window's worth without giving any of it back.
    let first = tokio::time::timeout(Duration::from_secs(5), data.data())
        .await
        .expect("some body");
    assert!(first.is_some());
    // The proxy must give up on the stalled stream instead of holding it forever.
    let ended = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match data.data().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled stream was still open after 8 s");
}
