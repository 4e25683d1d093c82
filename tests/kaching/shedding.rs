//! Load shedding: past `server.max_in_flight_per_ip` or `server.max_in_flight`
//! a request is answered 503 with `Retry-After` at once, and nothing stays
//! counted once the requests in flight end. Requests are held in flight for
//! real: a post whose body has not all arrived is being served.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{envelope, plaintext, Backend, TestApp, KEY};

/// A post from `from` whose head and first bytes are sent, the rest never:
/// in flight until the stream is dropped.
async fn hold_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    stream
        .write_all(b"POST /ins HTTP/1.1\r\nhost: kaching\r\ncontent-length: 4096\r\n\r\n{\"notif")
        .await
        .unwrap();
    stream
}

/// Posts a genuine notification from `client` until it is answered 503
/// (the held request may not have reached the server yet), and checks the answer.
async fn shed(app: &TestApp, client: &reqwest::Client, prefix: &str) {
    for n in 0..100 {
        let body = envelope(
            KEY,
            &plaintext(
                &format!("{prefix}{n:03}"),
                "SALE",
                "2026-11-20T10:00:00Z",
                1,
            ),
        );
        let r = client
            .post(format!("{}/ins", app.base))
            .body(body)
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            assert_eq!(r.headers()["retry-after"], "5");
            assert_eq!(r.text().await.unwrap(), "overloaded; retry later\n");
            return;
        }
        assert_eq!(r.status(), 200, "{prefix}{n:03}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{prefix}: never shed");
}

async fn post(app: &TestApp, client: &reqwest::Client, receipt: &str) -> u16 {
    let body = envelope(KEY, &plaintext(receipt, "SALE", "2026-11-20T10:00:00Z", 1));
    client
        .post(format!("{}/ins", app.base))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn requests_past_an_in_flight_cap_get_503_with_retry_after() {
    let app = TestApp::spawn(Backend::Sqlite, |s| {
        s.tls.mode = kaching::config::TlsMode::Off;
        s.server.max_in_flight = 2;
        s.server.max_in_flight_per_ip = 1;
    })
    .await
    .unwrap();
    let (one, two, four) = (
        app.client_from("127.0.0.1"),
        app.client_from("127.0.0.2"),
        app.client_from("127.0.0.4"),
    );
    // One request of 127.0.0.1 in flight: its next is shed, not queued…
    let held_one = hold_from("127.0.0.1", app.addr).await;
    shed(&app, &one, "SHEDIP").await;
    // …and another address is served.
    assert_eq!(post(&app, &two, "SHEDOK01").await, 200);
    // Two in flight in all: every address is shed.
    let held_two = hold_from("127.0.0.2", app.addr).await;
    shed(&app, &four, "SHEDALL").await;
    // Once they end, nothing stays counted.
    drop((held_one, held_two));
    let again = async {
        for n in 0.. {
            if post(&app, &one, &format!("SHEDEND{n:02}")).await == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), again)
        .await
        .expect("served again once the held requests end");
    assert_eq!(post(&app, &two, "SHEDOK02").await, 200);
    assert_eq!(post(&app, &four, "SHEDOK03").await, 200);
    let text = app.scrape().await;
    for cap in ["server.max_in_flight", "server.max_in_flight_per_ip"] {
        let series = format!(r#"kaching_http_requests_shed_total{{cap="{cap}"}} 1"#);
        assert!(text.contains(&series), "{series} in {text}");
    }
    app.stop().await;
}
