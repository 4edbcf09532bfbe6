//! Drains through a real proxy: reload removing a backend, the drain API,
//! a drain in the middle of a fragmented message, a refused reload, re-home.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::proxy::{
    Ws, addrs, admin_json, admin_post, backends, config_text, echo, eventually, start_proxy_from_file, ws,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const DRAIN: &str = "[pools.echo.drain]\ntimeout = \"8s\"\nspread = \"2s\"\n";

/// What one client saw while it kept a numbered conversation going.
#[derive(Debug, Default)]
struct Conversation {
    sent: u64,
    echoed: u64,
    /// Close code and reason, and when it came.
    close: Option<(u16, String, Instant)>,
    error: Option<String>,
}

/// Keeps sending numbered messages and checking their echo, until the
/// backend says goodbye or `stop` is set; bounded to 2,000 messages.
async fn converse(mut ws: Ws, stop: Arc<AtomicBool>) -> Conversation {
    let mut c = Conversation::default();
    while !stop.load(Ordering::Relaxed) && c.sent < 2000 {
        let text = format!("seq:{}", c.sent);
        if let Err(e) = ws.send(Message::text(text.clone())).await {
            c.error = Some(format!("send: {e}"));
            return c;
        }
        c.sent += 1;
        match tokio::time::timeout(Duration::from_secs(15), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => c.echoed += 1,
            Ok(Some(Ok(Message::Close(f)))) => {
                let f = f.unwrap_or_else(|| panic!("a Close without a code"));
                c.close = Some((f.code.into(), f.reason.to_string(), Instant::now()));
                // Let tungstenite answer the Close and see the end of the stream.
                while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {}
                return c;
            }
            other => {
                c.error = Some(format!("after {text}: {other:?}"));
                return c;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_removed_by_reload_drains_paced_and_the_others_lose_nothing() {
    let bs = backends(&["a", "b", "c"]).await;
    let (proxy, path) = start_proxy_from_file(&config_text(&addrs(&bs), DRAIN)).await;
    let public = proxy.listener("public").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut conversations = Vec::new();
    for k in 0..300 {
        let (ws, backend) = ws(public, &format!("/?room=room-{k}")).await;
        conversations.push((backend, tokio::spawn(converse(ws, stop.clone()))));
    }
    let on_a = conversations.iter().filter(|(b, _)| b == "a").count();
    assert!(on_a > 50, "room keys should spread: {on_a} on a");
    tokio::time::sleep(Duration::from_millis(300)).await;

    std::fs::write(&path, config_text(&addrs(&bs[1..]), DRAIN)).unwrap();
    let reloaded_at = Instant::now();
    let (status, report) = admin_post(proxy.admin, "/api/reload").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["changes"]["removed"][0], format!("echo/{}", bs[0].addr));

    // Every client of "a" hears 1012 and goes; wait for them, bounded.
    let mut results = Vec::new();
    let (drained, others): (Vec<_>, Vec<_>) = conversations.into_iter().partition(|(b, _)| b == "a");
    for (_, task) in drained {
        results.push(tokio::time::timeout(Duration::from_secs(20), task).await.expect("drained within 20s").unwrap());
    }
    // The backends that stayed kept their state: their open counts are their live tunnels.
    let backends = admin_json(proxy.admin, "/api/backends").await;
    let remaining = backends["pools"][0]["backends"].as_array().unwrap();
    assert_eq!(remaining.len(), 2);
    let open: u64 = remaining.iter().map(|b| b["open"].as_u64().unwrap()).sum();
    assert_eq!(open as usize, 300 - on_a, "open counts carried over the reload");
    stop.store(true, Ordering::Relaxed);
    for (backend, task) in others {
        let c = task.await.unwrap();
        assert!(c.error.is_none() && c.close.is_none(), "a tunnel on {backend} was disturbed: {c:?}");
        assert_eq!(c.sent, c.echoed, "a tunnel on {backend} lost messages");
        assert!(c.sent > 5);
    }
    let mut offsets = Vec::new();
    for c in &results {
        assert!(c.error.is_none(), "{c:?}");
        let (code, reason, at) = c.close.as_ref().expect("every client of the removed backend got a Close");
        assert_eq!((*code, reason.as_str()), (1012, "tidegate: please reconnect"));
        offsets.push(at.duration_since(reloaded_at).as_secs_f64());
    }
    offsets.sort_by(f64::total_cmp);
    let at = |q: f64| offsets[((offsets.len() - 1) as f64 * q) as usize];
    let deciles: Vec<usize> = (0..10).map(|d| offsets.iter().filter(|o| (**o * 5.0) as usize == d).count()).collect();
    eprintln!(
        "drain figures: {} tunnels drained (1012 each), closes after the reload at min {:.3}s p50 {:.3}s max {:.3}s; \
         per 0.2 s of the 2 s window: {deciles:?}; {} tunnels on other backends lost 0 messages",
        offsets.len(),
        at(0.0),
        at(0.5),
        at(1.0),
        300 - offsets.len()
    );
    // Spread over the 2 s window, not bunched at its start.
    let first_tenth = offsets.iter().filter(|o| **o < 0.2).count();
    assert!(first_tenth < offsets.len() / 3, "{first_tenth} of {} closes came in the first tenth", offsets.len());
    assert!(
        offsets.iter().cloned().fold(0.0, f64::max) > 1.0,
        "closes should reach the end of the window: {offsets:?}"
    );
    assert!(eventually(|| proxy.shared.tunnels.select(|t| *t.backend.addr == bs[0].addr.to_string()).is_empty()).await);
}

#[tokio::test]
async fn a_refused_reload_changes_nothing() {
    let bs = backends(&["a", "b"]).await;
    let (proxy, path) = start_proxy_from_file(&config_text(&addrs(&bs), "")).await;
    let public = proxy.listener("public").unwrap();
    let (mut live, _) = ws(public, "/?room=x").await;

    std::fs::write(&path, "[[listeners]]\nname = \"public\"\nbind = \"nowhere\"\n").unwrap();
    let (status, body) = admin_post(proxy.admin, "/api/reload").await;
    assert_eq!(status, 400);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(&format!("{}:3:", path.display())), "errors are located: {error}");

    assert_eq!(echo(&mut live, Message::text("still")).await, Message::text("still"));
    let (mut fresh, _) = ws(public, "/?room=y").await;
    assert_eq!(echo(&mut fresh, Message::text("new")).await, Message::text("new"));
    let pools = admin_json(proxy.admin, "/api/backends").await;
    assert_eq!(pools["pools"][0]["backends"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_drain_api_closes_a_backends_tunnels_and_undrain_brings_it_back() {
    let bs = backends(&["a", "b", "c"]).await;
    let fast = "[pools.echo.drain]\ntimeout = \"5s\"\nspread = \"100ms\"\n";
    let (proxy, _path) = start_proxy_from_file(&config_text(&addrs(&bs), fast)).await;
    let public = proxy.listener("public").unwrap();
    let mut home = HashMap::new();
    let mut tunnels = Vec::new();
    for k in 0..30 {
        let (ws, backend) = ws(public, &format!("/?room=k{k}")).await;
        home.insert(k, backend.clone());
        tunnels.push((k, backend, ws));
    }
    let a = bs[0].addr.to_string();
    let (status, body) = admin_post(proxy.admin, &format!("/api/pools/echo/backends/{a}/drain")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["tunnels"], home.values().filter(|b| *b == "a").count());

    for (k, backend, mut ws) in tunnels {
        if backend == "a" {
            match common::proxy::next(&mut ws).await {
                Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Restart, "k{k}"),
                other => panic!("k{k}: expected a Close, got {other:?}"),
            }
        } else {
            assert_eq!(echo(&mut ws, Message::text("here")).await, Message::text("here"), "k{k} on {backend}");
        }
    }
    let pools = admin_json(proxy.admin, "/api/backends").await;
    assert_eq!(pools["pools"][0]["backends"][0]["state"], "draining");
    for k in 0..30 {
        let (_, backend) = ws(public, &format!("/?room=k{k}")).await;
        assert_ne!(backend, "a", "a draining backend takes no new tunnel");
    }

    let (status, _) = admin_post(proxy.admin, &format!("/api/pools/echo/backends/{a}/undrain")).await;
    assert_eq!(status, 200);
    for (k, backend) in &home {
        let (_, now) = ws(public, &format!("/?room=k{k}")).await;
        assert_eq!(&now, backend, "k{k} goes home after undrain");
    }
    let (status, body) = admin_post(proxy.admin, "/api/pools/echo/backends/10.9.9.9:1/drain").await;
    assert_eq!(status, 404, "{body}");
}

/// A backend that sends the first frame of a fragmented text message in two
/// halves, waiting between them for `go`; then the last fragment.
async fn fragmenting_backend(
    halfway: tokio::sync::oneshot::Sender<()>,
    go: tokio::sync::oneshot::Receiver<()>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut s = common::proxy::accept_websocket(&listener).await;
        // First fragment: text, no FIN, 60,000 bytes, sent in two halves.
        let payload = vec![b'a'; 60_000];
        s.write_all(&[0x01, 126, (60_000u16 >> 8) as u8, 60_000u16 as u8]).await.unwrap();
        s.write_all(&payload[..30_000]).await.unwrap();
        let _ = halfway.send(());
        let _ = go.await;
        s.write_all(&payload[30_000..]).await.unwrap();
        // The last fragment comes after the proxy's Close: it must never reach the client.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = s.write_all(&[0x80, 3, b'e', b'n', b'd']).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
    });
    addr
}

#[tokio::test]
async fn a_drain_in_the_middle_of_a_fragmented_message_closes_after_a_complete_frame() {
    let (halfway_tx, halfway) = tokio::sync::oneshot::channel();
    let (go, go_rx) = tokio::sync::oneshot::channel();
    let backend = fragmenting_backend(halfway_tx, go_rx).await;
    let fast = "[pools.echo.drain]\ntimeout = \"10s\"\nspread = \"1ms\"\n";
    let (proxy, _path) = start_proxy_from_file(&config_text(&[backend], fast)).await;
    let (mut client, _) = ws(proxy.listener("public").unwrap(), "/?room=f").await;
    halfway.await.unwrap();

    let (status, _) = admin_post(proxy.admin, &format!("/api/pools/echo/backends/{backend}/drain")).await;
    assert_eq!(status, 200);
    // The drain has asked the tunnel, mid-frame, to close.
    assert!(eventually(|| proxy.shared.tunnels.select(|t| t.drain_request().is_some()).len() == 1).await);
    go.send(()).unwrap();

    // A strict client: a Close inside the frame would be a protocol error here.
    match common::proxy::next(&mut client).await {
        Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1012),
        other => panic!("expected the Close after the complete frame, got {other:?}"),
    }
    assert!(eventually(|| proxy.shared.tunnels.is_empty()).await);
}

#[tokio::test]
async fn rehome_moves_only_the_tunnels_whose_key_moved() {
    let bs = backends(&["a", "b", "c"]).await;
    let rehome = "rehome = true\n\n[pools.echo.drain]\ntimeout = \"5s\"\nspread = \"200ms\"\n";
    let (proxy, path) = start_proxy_from_file(&config_text(&addrs(&bs[..2]), rehome)).await;
    let public = proxy.listener("public").unwrap();
    let mut tunnels = Vec::new();
    for k in 0..60 {
        let (ws, backend) = ws(public, &format!("/?room=k{k}")).await;
        tunnels.push((k, backend, ws));
    }
    std::fs::write(&path, config_text(&addrs(&bs), rehome)).unwrap();
    let (status, report) = admin_post(proxy.admin, "/api/reload").await;
    assert_eq!(status, 200);

    let mut moved = 0;
    for (k, before, mut ws) in tunnels {
        let (_, now) = common::proxy::ws(public, &format!("/?room=k{k}")).await;
        if now == before {
            assert_eq!(echo(&mut ws, Message::text("stay")).await, Message::text("stay"), "k{k} should stay");
        } else {
            assert_eq!(now, "c", "keys only move to the backend that joined");
            moved += 1;
            match common::proxy::next(&mut ws).await {
                Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1012, "k{k}"),
                other => panic!("k{k} moved to c but its tunnel got {other:?}"),
            }
        }
    }
    assert!(moved > 5, "about a third of 60 keys move to c: {moved}");
    assert_eq!(report["changes"]["rehomed"], moved);
}

#[tokio::test]
async fn a_reload_rebinds_only_the_listener_whose_address_changed() {
    let bs = backends(&["a"]).await;
    let two = |second: &str| {
        config_text(&[bs[0].addr], "")
            + &format!(
                "\n[[listeners]]\nname = \"second\"\nbind = \"{second}\"\n\n[[routes]]\nlistener = \"second\"\npool = \"echo\"\n"
            )
    };
    let (proxy, path) = start_proxy_from_file(&two("127.0.0.1:0")).await;
    let public = proxy.listener("public").unwrap();
    let old_second = proxy.listener("second").unwrap();
    let (mut live, _) = ws(public, "/?room=x").await;
    let (mut on_second, _) = ws(old_second, "/?room=y").await;

    // Move "second" to a new port; "public" stays as it is.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    std::fs::write(&path, two(&free.to_string())).unwrap();
    let (status, report) = admin_post(proxy.admin, "/api/reload").await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["changes"]["rebound"], serde_json::json!(["second"]));

    assert_eq!(proxy.shared.listener_addr("public"), Some(public));
    assert_eq!(proxy.shared.listener_addr("second"), Some(free));
    let (mut fresh, _) = ws(free, "/?room=z").await;
    assert_eq!(echo(&mut fresh, Message::text("new port")).await, Message::text("new port"));
    assert!(eventually(|| std::net::TcpStream::connect(old_second).is_err()).await, "the old port still accepts");
    // Connections already made, on either listener, carry on.
    assert_eq!(echo(&mut live, Message::text("a")).await, Message::text("a"));
    assert_eq!(echo(&mut on_second, Message::text("b")).await, Message::text("b"));
}
