//! The real `tidegate` binary: `check`, `run` on a bad config, `--version`, and `demo`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn tidegate() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tidegate"))
}

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tidegate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

const BROKEN: &str = r#"[admin]
bind = "127.0.0.1:9901"

[[listeners]]
name = "public"
bind = "127.0.0.1:8080"

[[routes]]
listener = "public"
pool = "nowhere"

[pools.chat]
hash_key = "query:"
backends = ["127.0.0.1:9001", "127.0.0.1:9001", { addr = "127.0.0.1:9003", weight = 0 }]
"#;

#[test]
fn check_lists_every_problem_with_its_place_and_exits_2() {
    let path = write_temp("broken.toml", BROKEN);
    let out = tidegate().args(["check", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for (line, key) in [
        (10, "routes[0].pool"),
        (13, "pools.chat.hash_key"),
        (14, "pools.chat.backends[1]"),
        (14, "pools.chat.backends[2]"),
    ] {
        let wanted = format!("{file}:{line}:");
        assert!(
            err.lines().any(|l| l.starts_with(&wanted) && l.contains(key)),
            "no `{wanted}` line for {key} in:\n{err}"
        );
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let out = tidegate().args(["check", "--config", example]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn run_refuses_a_broken_config_and_a_missing_file() {
    let path = write_temp("broken-run.toml", BROKEN);
    let out = tidegate().args(["run", "--config"]).arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = tidegate().args(["run", "--config", "/nonexistent/tidegate.toml"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/tidegate.toml"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn version_and_help() {
    let out = tidegate().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("tidegate "));
    let out = tidegate().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "check", "demo"] {
        assert!(help.contains(cmd), "{help}");
    }
}

/// Kills the child when the test ends, whatever happens.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_demo_serves_its_page_and_keeps_a_room_on_one_backend() {
    let mut child =
        Child(tidegate().args(["demo", "--port", "0"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let first_line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = tokio::time::timeout(Duration::from_secs(30), first_line).await.unwrap().unwrap().unwrap();
    let url =
        line.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no URL in {line:?}"));
    let host = url.trim_start_matches("http://").trim_end_matches('/').to_string();

    let page = reqwest_free_get(&host, "/").await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<html"), "the page is served through the proxy");

    let mut seen = Vec::new();
    for user in ["ann", "bob"] {
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{host}/ws?room=lobby&user={user}")).await.unwrap();
        let hello = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap().unwrap().unwrap();
        let hello: serde_json::Value = serde_json::from_str(hello.to_text().unwrap()).unwrap();
        assert_eq!(hello["type"], "hello");
        seen.push(hello["backend"].as_str().unwrap().to_string());
        ws.send(Message::Close(None)).await.unwrap();
    }
    assert_eq!(seen[0], seen[1], "one room, one backend");
}

async fn reqwest_free_get(host: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.unwrap().unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_talk_to_a_running_instance() {
    let backends = [common::backend::TestBackend::start("a").await, common::backend::TestBackend::start("b").await];
    let text = common::proxy::config_text(
        &[backends[0].addr, backends[1].addr],
        "[pools.echo.drain]\ntimeout = \"5s\"\nspread = \"200ms\"\n",
    );
    let (proxy, _path) = common::proxy::start_proxy_from_file(&text).await;
    let admin = proxy.admin.to_string();
    let a = backends[0].addr.to_string();
    let mut tunnels = Vec::new();
    for k in 0..10 {
        tunnels.push(common::proxy::ws(proxy.listener("public").unwrap(), &format!("/?room=c{k}")).await);
    }
    let run = |args: Vec<String>| tokio::task::spawn_blocking(move || tidegate().args(args).output().unwrap());

    let out = run(vec!["status".into(), "--admin".into(), admin.clone()]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("10 open tunnel(s)") && text.contains(&a), "{text}");

    let out = run(vec!["drain".into(), "echo".into(), a.clone(), "--wait".into(), "--admin".into(), admin.clone()])
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("is drained"), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let on_a = tunnels.iter().filter(|(_, b)| b == "a").count() as u64;
    assert!(on_a > 0);
    let out = run(vec!["status".into(), "--json".into(), "--admin".into(), admin.clone()]).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"]["tunnels"], 10 - on_a);
    assert_eq!(v["backends"][0]["backends"][0]["state"], "draining");

    let out = run(vec!["undrain".into(), "echo".into(), a.clone(), "--admin".into(), admin.clone()]).await.unwrap();
    assert!(out.status.success());
    let out = run(vec!["reload".into(), "--admin".into(), admin.clone()]).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("reloaded:"));

    // An unknown backend and an unreachable admin endpoint: one sentence, non-zero exit.
    let out = run(vec!["drain".into(), "echo".into(), "10.1.1.1:1".into(), "--admin".into(), admin]).await.unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no backend"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(vec!["status".into(), "--admin".into(), "127.0.0.1:1".into()]).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin endpoint"));
}
