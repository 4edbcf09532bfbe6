//! The real binary under SIGTERM: readiness goes 503 at once, every tunnel
//! gets a Close, and the process exits by itself before the drain deadline.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::backend::TestBackend;
use common::proxy::{config_text, next, run_binary, ws};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn sigterm_drains_every_tunnel_and_exits() {
    let backends = [TestBackend::start("a").await, TestBackend::start("b").await];
    let drain = "[pools.echo.drain]\ntimeout = \"20s\"\nspread = \"500ms\"\n";
    let mut proxy = run_binary("shutdown", &config_text(&[backends[0].addr, backends[1].addr], drain)).await;
    let (public, admin) = (proxy.public, proxy.admin);

    let mut tunnels = Vec::new();
    for k in 0..20 {
        let (mut ws, _) = ws(public, &format!("/?room=s{k}")).await;
        assert_eq!(common::proxy::echo(&mut ws, Message::text("hi")).await, Message::text("hi"));
        tunnels.push(ws);
    }
    let (status, _, _) = common::proxy::get(admin, "/readyz", &[]).await;
    assert_eq!(status, 200);

    // A plain request in flight when the signal comes still gets its answer.
    let in_flight = tokio::spawn(common::proxy::get(public, "/slow?room=s0&ms=1000", &[]));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let signalled = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &proxy.child.id().to_string()]).status().unwrap().success());
    let mut not_ready = false;
    for _ in 0..100 {
        let (status, _, _) = common::proxy::get(admin, "/readyz", &[]).await;
        if status == 503 {
            not_ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(not_ready, "readiness did not turn 503 after SIGTERM");

    for (k, mut ws) in tunnels.into_iter().enumerate() {
        match next(&mut ws).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1012, "tunnel {k}"),
            other => panic!("tunnel {k}: expected a Close, got {other:?}"),
        }
    }
    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"slow"[..]), "the in-flight request was cut");
    let status = tokio::task::spawn_blocking(move || proxy.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    assert!(signalled.elapsed() < Duration::from_secs(20), "exited only at the deadline");
    // New clients are refused once the listeners are closed.
    assert!(tokio::net::TcpStream::connect(public).await.is_err());
}
