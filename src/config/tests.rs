//! Tests of loading and validation: each rule, its place and its fix.

use super::*;

/// A small valid config; tests append to it or replace parts of it.
const BASE: &str = r#"[[listeners]]
name = "public"
bind = "127.0.0.1:8080"

[[routes]]
listener = "public"
pool = "chat"

[pools.chat]
hash_key = "ip"
backends = ["127.0.0.1:9001"]
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text, "t.toml") {
        Ok(c) => panic!("expected errors, got {c:#?}"),
        Err(e) => e.0,
    }
}

/// The error at `path`, checked to be at `line:col`.
fn at<'a>(errs: &'a [ConfigError], path: &str, line: usize, col: usize) -> &'a ConfigError {
    let e = errs.iter().find(|e| e.path == path).unwrap_or_else(|| panic!("no error at {path}: {errs:#?}"));
    assert_eq!((e.line, e.col), (line, col), "{e}");
    assert!(!e.message.is_empty() && !e.fix.is_empty(), "{e}");
    e
}

#[test]
fn minimal_config_gets_every_default() {
    let c = parse(BASE, "t.toml").unwrap();
    assert_eq!(c.workers, None);
    assert_eq!(c.admin, AdminConfig { bind: "127.0.0.1:9901".parse().unwrap() });
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.limits.idle_timeout, None);
    assert_eq!(c.limits.max_header_bytes, 32_768);
    assert_eq!(c.limits.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.response_timeout, Duration::from_secs(60));
    assert_eq!(c.listeners, vec![ListenerConfig { name: "public".into(), bind: "127.0.0.1:8080".parse().unwrap() }]);
    assert_eq!(
        c.routes,
        vec![RouteConfig { listener: "public".into(), host: None, path_prefix: None, pool: "chat".into() }]
    );
    let p = &c.pools[0];
    assert_eq!((p.name.as_str(), &p.hash_key, &p.fallback_key), ("chat", &KeySpec::Ip, &KeySpec::Ip));
    assert_eq!(p.backends, vec![BackendConfig { addr: "127.0.0.1:9001".into(), weight: 1 }]);
    assert_eq!((p.bounded_load, p.max_fails, p.fail_timeout), (None, 1, Duration::from_secs(10)));
}

#[test]
fn example_file_parses() {
    let c = parse(include_str!("../../config.example.toml"), "config.example.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners[0].name, "public");
    assert_eq!(c.listeners[0].bind, "127.0.0.1:8080".parse().unwrap());
    assert_eq!(c.routes[0].host.as_deref(), Some("chat.example.com"));
    assert_eq!(c.routes[0].path_prefix.as_deref(), Some("/ws"));
    let chat = &c.pools[0];
    assert_eq!(chat.hash_key, KeySpec::Query("room".into()));
    let weights: Vec<_> = chat.backends.iter().map(|b| (b.addr.as_str(), b.weight)).collect();
    assert_eq!(weights, [("127.0.0.1:9001", 1), ("127.0.0.1:9002", 1), ("127.0.0.1:9003", 2)]);
    assert_eq!(c.limits, Limits::default(), "the example shows the defaults");
}

#[test]
fn every_key_is_read() {
    let text = r#"workers = 4
[admin]
bind = "0.0.0.0:9901"
allow_remote = true
[[listeners]]
name = "public"
bind = "[::1]:8080"
[[routes]]
listener = "public"
host = "Chat.Example.com:8080"
path_prefix = "/ws"
pool = "zeta"
[pools.zeta]
hash_key = "header:X-Room"
fallback_key = "cookie:sid"
backends = [" chat.default.svc:9000 ", { addr = "[fd00::1]:9001", weight = 3 }]
bounded_load = 1.25
max_fails = 3
fail_timeout = "1m30s"
[pools.alpha]
hash_key = "path:2"
backends = ["10.0.0.1:1"]
[limits]
max_connections = 5
handshake_timeout = "250ms"
idle_timeout = "5m"
max_header_bytes = 1024
connect_timeout = "1s"
response_timeout = "1h"
splice = true
"#;
    let c = parse(text, "t.toml").unwrap();
    assert_eq!(c.workers, Some(4));
    assert_eq!(c.admin.bind, "0.0.0.0:9901".parse().unwrap());
    assert_eq!(c.routes[0].host.as_deref(), Some("chat.example.com:8080"));
    let names: Vec<_> = c.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["zeta", "alpha"], "pools keep file order");
    let z = &c.pools[0];
    assert_eq!(z.hash_key.to_string(), "header:x-room");
    assert_eq!(z.fallback_key, KeySpec::Cookie("sid".into()));
    assert_eq!(z.backends[0], BackendConfig { addr: "chat.default.svc:9000".into(), weight: 1 });
    assert_eq!(z.backends[1], BackendConfig { addr: "[fd00::1]:9001".into(), weight: 3 });
    assert_eq!((z.bounded_load, z.max_fails, z.fail_timeout), (Some(1.25), 3, Duration::from_secs(90)));
    assert_eq!(c.pools[1].hash_key, KeySpec::Path(2));
    let l = &c.limits;
    assert_eq!((l.max_connections, l.max_header_bytes), (5, 1024));
    assert_eq!(l.handshake_timeout, Duration::from_millis(250));
    assert_eq!(l.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!((l.connect_timeout, l.response_timeout), (Duration::from_secs(1), Duration::from_secs(3600)));
    assert!(l.splice);
}

#[test]
fn splice_is_off_unless_asked_and_must_be_a_bool() {
    assert!(!parse(BASE, "t.toml").unwrap().limits.splice);
    assert!(!parse(&format!("{BASE}[limits]\nsplice = false\n"), "t.toml").unwrap().limits.splice);
    assert!(parse(&format!("{BASE}[limits]\nsplice = true\n"), "t.toml").unwrap().limits.splice);
    let errs = errors(&format!("{BASE}[limits]\nsplice = \"yes\"\nmax_connections = 0\n"));
    assert!(at(&errs, "limits.splice", 13, 10).message.contains("invalid type"), "{errs:#?}");
    at(&errs, "limits.max_connections", 14, 19);
    assert_eq!(errs.len(), 2, "{errs:#?}");
}

#[test]
fn listener_problems_are_all_reported() {
    let text = r#"[[listeners]]
name = "public"
bind = "localhost:80"
[[listeners]]
name = "public"
bind = "127.0.0.1"
[[listeners]]
name = ""
bind = "127.0.0.1:9901"
[[listeners]]
bind = "127.0.0.1:8081"
[[listeners]]
name = "b"
[[listeners]]
name = "c"
bind = "127.0.0.1:8081"
"#;
    let errs = errors(text);
    let e = at(&errs, "listeners[0].bind", 3, 8);
    assert!(e.message.contains("localhost:80"), "{e}");
    assert!(e.fix.contains("use an IP address such as 127.0.0.1:8080"), "{e}");
    assert!(at(&errs, "listeners[1].name", 5, 8).message.contains("\"public\" is already used at line 2"));
    assert!(at(&errs, "listeners[1].bind", 6, 8).message.contains("has no port"));
    at(&errs, "listeners[2].name", 8, 8);
    assert!(at(&errs, "listeners[2].bind", 9, 8).message.contains("admin endpoint"));
    at(&errs, "listeners[3].name", 10, 1);
    at(&errs, "listeners[4].bind", 12, 1);
    assert!(at(&errs, "listeners[5].bind", 16, 8).message.contains("already used by listener \"#3\""));
    // No routes were written either.
    at(&errs, "routes", 1, 1);
    assert_eq!(errs.len(), 9, "{errs:#?}");
}

#[test]
fn no_listener_and_no_route() {
    let errs = errors("[pools.chat]\nhash_key = \"ip\"\nbackends = [\"127.0.0.1:9001\"]\n");
    at(&errs, "listeners", 1, 1);
    at(&errs, "routes", 1, 1);
    assert_eq!(errs.len(), 2);
    let no_routes = BASE.replace("[[routes]]\nlistener = \"public\"\npool = \"chat\"\n", "");
    let errs = errors(&format!("routes = []\n{no_routes}"));
    at(&errs, "routes", 1, 10);
    assert_eq!(errs.len(), 1, "{errs:#?}");
}

#[test]
fn admin_must_stay_on_loopback_unless_allowed() {
    let text = format!("[admin]\nbind = \"0.0.0.0:9901\"\n{BASE}");
    let errs = errors(&text);
    let e = at(&errs, "admin.bind", 2, 8);
    assert!(e.fix.contains("set admin.allow_remote = true"), "{e}");
    assert_eq!(errs.len(), 1);
    let text = format!("[admin]\nbind = \"0.0.0.0:9901\"\nallow_remote = true\n{BASE}");
    assert!(parse(&text, "t.toml").is_ok());
    let errs = errors(&format!("[admin]\nbind = \"admin:9901\"\n{BASE}"));
    at(&errs, "admin.bind", 2, 8);
    let c = parse(&format!("[admin]\nbind = \"[::1]:9000\"\n{BASE}"), "t.toml").unwrap();
    assert_eq!(c.admin.bind, "[::1]:9000".parse().unwrap());
}

#[test]
fn route_problems_are_all_reported() {
    let text = format!(
        r#"{BASE}
[[routes]]
listener = "private"
host = "https://chat.example.com"
path_prefix = "ws"
pool = "chta"

[[routes]]
host = "chat.example.com/ws"

[[routes]]
listener = "public"
host = "Chat.Example.COM"
pool = "chat"
"#
    );
    let errs = errors(&text);
    let e = at(&errs, "routes[1].listener", 14, 12);
    assert!(e.message.contains("listener \"private\" is not defined") && e.fix.contains("public"), "{e}");
    assert!(at(&errs, "routes[1].host", 15, 8).message.contains("scheme"));
    assert_eq!(at(&errs, "routes[1].path_prefix", 16, 15).fix, "write \"/ws\"");
    let e = at(&errs, "routes[1].pool", 17, 8);
    assert!(e.message.contains("pool \"chta\" is not defined") && e.fix.contains("chat"), "{e}");
    at(&errs, "routes[2].listener", 19, 1);
    at(&errs, "routes[2].pool", 19, 1);
    assert!(at(&errs, "routes[2].host", 20, 8).message.contains("path"));
    assert_eq!(errs.len(), 7, "{errs:#?}");
    // The valid third route was lowercased (checked on a config without the others).
    let c = parse(
        &format!("{BASE}\n[[routes]]\nlistener = \"public\"\nhost = \"Chat.Example.COM\"\npool = \"chat\"\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(c.routes[1].host.as_deref(), Some("chat.example.com"));
}

#[test]
fn pool_problems_are_all_reported() {
    let text = format!(
        r#"{BASE}
[pools.api]
hash_key = "header:"
fallback_key = "path:0"
backends = [
  "127.0.0.1:9001",
  "127.0.0.1:0",
  " 127.0.0.1:9001",
  {{ addr = "10.0.0.1:80", weight = 0 }},
  "fd00::1:80",
  "chat_svc:80",
  "300.1.1.1:80",
  {{ weight = 2 }},
  {{ addr = "10.0.0.2:80", weight = 5000 }},
]
bounded_load = 1.0
max_fails = 0
fail_timeout = "10"

[pools.empty]
hash_key = "ip"
backends = []

[pools.none]
fallback_key = "ip"
"#
    );
    let errs = errors(&text);
    assert!(at(&errs, "pools.api.hash_key", 14, 12).message.contains("header name is empty"));
    assert!(at(&errs, "pools.api.fallback_key", 15, 16).message.contains("count from 1"));
    assert!(at(&errs, "pools.api.backends[1]", 18, 3).message.contains("port \"0\""));
    let e = at(&errs, "pools.api.backends[2]", 19, 3);
    assert!(e.message.contains("listed twice") && e.message.contains("line 17"), "{e}");
    let e = at(&errs, "pools.api.backends[3].weight", 20, 36);
    assert!(e.fix.contains("remove the backend") && e.fix.contains("drain"), "{e}");
    assert!(at(&errs, "pools.api.backends[4]", 21, 3).message.contains("brackets"));
    assert!(at(&errs, "pools.api.backends[5]", 22, 3).message.contains("'_'"));
    assert!(at(&errs, "pools.api.backends[6]", 23, 3).message.contains("IPv4"));
    at(&errs, "pools.api.backends[7].addr", 24, 3);
    at(&errs, "pools.api.backends[8].weight", 25, 36);
    assert!(at(&errs, "pools.api.bounded_load", 27, 16).fix.contains("1.25"));
    at(&errs, "pools.api.max_fails", 28, 13);
    assert!(at(&errs, "pools.api.fail_timeout", 29, 16).message.contains("\"250ms\", \"10s\", \"5m\", \"1h\""));
    assert!(at(&errs, "pools.empty.backends", 33, 12).message.contains("\"empty\" has no backends"));
    at(&errs, "pools.none.hash_key", 35, 1);
    at(&errs, "pools.none.backends", 35, 1);
    assert_eq!(errs.len(), 16, "{errs:#?}");
}

#[test]
fn unused_pool_is_fine() {
    let text = format!("{BASE}\n[pools.spare]\nhash_key = \"cookie:sid\"\nbackends = [\"127.0.0.1:9100\"]\n");
    assert_eq!(parse(&text, "t.toml").unwrap().pools.len(), 2);
}

#[test]
fn limit_and_worker_problems_are_all_reported() {
    let text = format!(
        r#"workers = 0
{BASE}
[limits]
max_connections = -1
handshake_timeout = "0s"
idle_timeout = "forever"
max_header_bytes = 100
connect_timeout = "5 s"
response_timeout = "1.5s"
"#
    );
    let errs = errors(&text);
    at(&errs, "workers", 1, 11);
    at(&errs, "limits.max_connections", 15, 19);
    assert!(at(&errs, "limits.handshake_timeout", 16, 21).message.contains("zero"));
    assert!(at(&errs, "limits.idle_timeout", 17, 16).message.contains("\"off\""));
    assert!(at(&errs, "limits.max_header_bytes", 18, 20).message.contains("at least 1024"));
    at(&errs, "limits.connect_timeout", 19, 19);
    assert!(at(&errs, "limits.response_timeout", 20, 20).message.contains("fractions"));
    assert_eq!(errs.len(), 7, "{errs:#?}");
    let text = format!("{BASE}[limits]\nmax_header_bytes = 2000000\nidle_timeout = \"off\"\n");
    assert!(at(&errors(&text), "limits.max_header_bytes", 13, 20).message.contains("at most 1048576"));
}

#[test]
fn unknown_keys_are_located_and_other_problems_still_reported() {
    let text = r#"[[listeners]]
name = "public"
bnd = "127.0.0.1:8080"

[[routes]]
listener = "public"
pool = "chat"
[pools.chat]
hash_key = "ip"
backends = ["127.0.0.1:9001"]
max_fail = 2
[pools.chat.health]
path = "/healthz"
[limits]
handshake_timeout = "soon"
"#;
    let errs = errors(text);
    let e = at(&errs, "listeners[0].bnd", 3, 1);
    assert!(e.message.contains("unknown field `bnd`") && e.message.contains("`bind`"), "{e}");
    at(&errs, "pools.chat.max_fail", 11, 1);
    at(&errs, "pools.chat.health", 12, 13);
    // The listener's missing bind only repeats the typo: not reported twice.
    assert!(errs.iter().all(|e| e.path != "listeners[0].bind"), "{errs:#?}");
    at(&errs, "limits.handshake_timeout", 15, 21);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    let errs = errors(&BASE.replace("[\"127.0.0.1:9001\"]", "[{ addr = \"127.0.0.1:9001\", wieght = 2 }]"));
    at(&errs, "pools.chat.backends[0]", 11, 13);
}

#[test]
fn wrong_types_and_syntax_are_located() {
    let errs = errors(&BASE.replace("hash_key = \"ip\"", "hash_key = 3"));
    assert!(at(&errs, "pools.chat.hash_key", 10, 12).message.contains("invalid type"));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let errs = errors(&format!("{BASE}[limits]\nmax_connections = \"many\"\nconnect_timeout = 5\n"));
    at(&errs, "limits.max_connections", 13, 19);
    at(&errs, "limits.connect_timeout", 14, 19);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let errs = errors("[[listeners]]\nname = public\nbind = = \"x\"\n");
    assert_eq!(errs.iter().map(|e| (e.line, e.col)).collect::<Vec<_>>(), [(2, 8), (3, 8)], "{errs:#?}");
    assert!(errs.iter().all(|e| e.path.is_empty() && !e.fix.is_empty()));
    // A wrong type on a whole value: one error, not another for what it holds.
    let errs = errors(&BASE.replace("[\"127.0.0.1:9001\"]", "\"127.0.0.1:9001\""));
    at(&errs, "pools.chat.backends", 11, 12);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let errs = errors(&format!("{BASE}[pools.chat]\n"));
    assert_eq!((errs[0].line, errs[0].col, errs.len()), (12, 8, 1), "{errs:#?}");
}

#[test]
fn three_problems_give_three_errors_in_file_order() {
    let text = BASE
        .replace("127.0.0.1:8080", "127.0.0.1:80800")
        .replace("pool = \"chat\"", "pool = \"chta\"")
        .replace("hash_key = \"ip\"", "hash_key = \"ip\"\nmax_fails = 0");
    let errs = errors(&text);
    assert!(errs[0].message.contains("port \"80800\""), "{}", errs[0]);
    let places: Vec<_> = errs.iter().map(|e| (e.path.as_str(), e.line, e.col)).collect();
    let want = [("listeners[0].bind", 3, 8), ("routes[0].pool", 7, 8), ("pools.chat.max_fails", 11, 13)];
    assert_eq!(places, want, "{errs:#?}");
}

#[test]
fn columns_count_characters() {
    let text = BASE.replace(
        "[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:8080\"\n",
        "listeners = [{ name = \"ünï\", bind = \"x\" }]\n\n\n",
    );
    let errs = errors(&text);
    at(&errs, "listeners[0].bind", 1, 37);
}

#[test]
fn error_display_and_load() {
    let errs = errors(&BASE.replace("\"127.0.0.1:8080\"", "\"localhost:80\""));
    let shown = ConfigErrors(errs).to_string();
    assert_eq!(
        shown,
        "t.toml:3:8: listeners[0].bind: listener \"public\": \"localhost:80\" is not an IP address and port \
             (fix: use an IP address such as 127.0.0.1:8080 (or [::1]:8080 for IPv6))\n"
    );
    let e = load(Path::new("/nonexistent/tidegate.toml")).unwrap_err();
    assert_eq!((e.0.len(), e.0[0].line, e.0[0].col), (1, 0, 0));
    assert!(e.to_string().starts_with("/nonexistent/tidegate.toml: cannot read the config file"), "{e}");
    let file = std::env::temp_dir().join(format!("tidegate-config-{}.toml", std::process::id()));
    std::fs::write(&file, BASE).unwrap();
    let loaded = load(&file);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(loaded, parse(BASE, "t.toml"));
    let two = ConfigErrors(vec![e.0[0].clone(), e.0[0].clone()]);
    assert_eq!(two.to_string().lines().count(), 2);
}

#[test]
fn durations() {
    let ok = [("250ms", 250), ("10s", 10_000), ("5m", 300_000), ("1h", 3_600_000), ("1m30s", 90_000), ("0s", 0)];
    for (s, ms) in ok {
        assert_eq!(parse_duration(s), Ok(Duration::from_millis(ms)), "{s}");
    }
    for s in ["", "10", "-1s", "10 parsecs", "s", "1.5s", "10S", " 10s", "99999999999999999999h", "9999999999999999h"] {
        let e = parse_duration(s).expect_err(s);
        assert!(!e.is_empty(), "{s}");
    }
    assert!(parse_duration("10").unwrap_err().contains("\"250ms\", \"10s\", \"5m\", \"1h\""));
}

#[test]
fn key_specs_round_trip() {
    for s in ["ip", "header:x-room", "cookie:sid", "query:room", "path:1", "path:12"] {
        let k: KeySpec = s.parse().unwrap();
        assert_eq!(k.to_string(), s);
    }
    assert_eq!("header:X-Room".parse::<KeySpec>().unwrap().to_string(), "header:x-room");
    for s in [
        "",
        "IP",
        "ip:x",
        "header:",
        "header:bad name",
        "header:a(b",
        "cookie:",
        "cookie:a=b",
        "query:",
        "path:0",
        "path:x",
        "path:",
        "room",
    ] {
        let e = s.parse::<KeySpec>().expect_err(s);
        assert!(e.contains("keys are ip, header:NAME"), "{s}: {e}");
    }
}

#[test]
fn drain_settings_and_rehome_are_read_and_checked() {
    let c = parse(BASE, "t.toml").unwrap();
    assert_eq!(c.pools[0].drain, DrainConfig::default());
    assert_eq!((c.pools[0].drain.close_code, c.pools[0].rehome), (1012, false));

    let text =
        format!("{BASE}rehome = true\n\n[pools.chat.drain]\ntimeout = \"1m\"\nspread = \"20s\"\nclose_code = 1001\n");
    let c = parse(&text, "t.toml").unwrap();
    let want = DrainConfig { timeout: Duration::from_secs(60), spread: Duration::from_secs(20), close_code: 1001 };
    assert_eq!((c.pools[0].drain, c.pools[0].rehome), (want, true));

    let text = format!("{BASE}\n[pools.chat.drain]\ntimeout = \"5s\"\nspread = \"10s\"\nclose_code = 1000\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:#?}");
    assert!(at(&errs, "pools.chat.drain.close_code", 16, 14).message.contains("1012"));
    assert!(at(&errs, "pools.chat.drain", 13, 1).message.contains("longer than timeout"));
}
