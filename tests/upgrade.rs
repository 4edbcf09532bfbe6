//! Binary upgrade on the real binary: the listening sockets move to a new
//! process while clients keep connecting; none is refused or reset, and the
//! old process drains its tunnels and exits.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::backend::TestBackend;
use common::proxy::{KillOnDrop, admin_json, admin_post, config_text, next, raw_exchange, run_binary, ws};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_refuses_nothing_and_the_old_process_drains_and_exits() {
    let backend = TestBackend::start("a").await;
    let drain = "[pools.echo.drain]\ntimeout = \"10s\"\nspread = \"300ms\"\n";
    let mut old = run_binary("upgrade", &config_text(&[backend.addr], drain)).await;
    let (public, admin) = (old.public, old.admin);
    let old_pid = admin_json(admin, "/api/status").await["pid"].as_u64().unwrap();
    assert_eq!(old_pid, u64::from(old.child.id()));

    let mut tunnels = Vec::new();
    for k in 0..10 {
        tunnels.push(ws(public, &format!("/?room=u{k}")).await.0);
    }

    // Clients keep connecting, each on a new connection, all through the hand-over.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut loops = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        loops.push(tokio::spawn(async move {
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let answer =
                    raw_exchange(public, b"GET /whoami?room=x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
                if answer.starts_with("HTTP/1.1 200") {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (status, answer) = admin_post(admin, "/api/upgrade").await;
    assert_eq!(status, 200, "{answer}");
    let new_pid = answer["new_pid"].as_u64().unwrap() as u32;
    let _new_guard = KillOnDrop(new_pid);
    assert_ne!(new_pid, old.child.id());

    // The old process's tunnels are told to reconnect, and it exits.
    for mut t in tunnels {
        match next(&mut t).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1012),
            other => panic!("expected a Close from the old process, got {other:?}"),
        }
    }
    let exit = tokio::task::spawn_blocking(move || old.child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "connection attempts failed during the hand-over");
    assert!(ok.load(Ordering::Relaxed) > 20, "the load loop ran");

    // The new process serves the same addresses, admin included.
    assert_eq!(admin_json(admin, "/api/status").await["pid"].as_u64(), Some(u64::from(new_pid)));
    let (mut fresh, _) = ws(public, "/?room=after").await;
    assert_eq!(common::proxy::echo(&mut fresh, Message::text("new")).await, Message::text("new"));
}

#[tokio::test]
async fn an_upgrade_whose_new_binary_fails_changes_nothing() {
    let backend = TestBackend::start("a").await;
    let proxy = run_binary("upgrade-bad", &config_text(&[backend.addr], "")).await;
    let (public, admin, path) = (proxy.public, proxy.admin, proxy.path.clone());
    let (mut live, _) = ws(public, "/?room=x").await;

    // The new binary will find a broken config and exit.
    std::fs::write(&path, "this is not toml").unwrap();
    let (status, answer) = admin_post(admin, "/api/upgrade").await;
    assert_eq!(status, 500, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("exited"), "{answer}");

    assert_eq!(common::proxy::echo(&mut live, Message::text("still")).await, Message::text("still"));
    assert_eq!(admin_json(admin, "/api/status").await["pid"].as_u64(), Some(u64::from(proxy.child.id())));
    let answer = raw_exchange(public, b"GET /whoami?room=x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
