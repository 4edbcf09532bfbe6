//! `deploy/` agrees with itself and with tidegate: every Kubernetes manifest
//! parses; the config embedded in the ConfigMap (and the one baked into the
//! container image) passes tidegate's own validation, in the library and in
//! `tidegate check`; the drain timeouts nest inside the grace periods of
//! Kubernetes and systemd; the probes reach the admin endpoint; the image is
//! multi-stage and runs as a non-root user. No network, no container engine:
//! everything is checked by parsing the files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;
use tidegate::config::{self, Config, DEFAULT_DRAIN_TIMEOUT};

/// Time allowed, beyond the drain timeout, for the last sockets to close and
/// the process to exit before the supervisor's SIGKILL.
const MARGIN: Duration = Duration::from_secs(5);

const K8S_DIR: &str = "deploy/kubernetes";
const DEPLOYMENT: &str = "deploy/kubernetes/deployment.yaml";
const CONFIGMAP: &str = "deploy/kubernetes/configmap.yaml";
const SERVICE: &str = "deploy/kubernetes/service.yaml";
const UNIT: &str = "deploy/systemd/tidegate.service";
const CONTAINERFILE: &str = "deploy/container/Containerfile";
const IMAGE_CONFIG: &str = "deploy/container/tidegate.toml";
const EXAMPLE: &str = "config.example.toml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: cannot read it ({e})"))
}

fn parse_config(text: &str, name: &str) -> Config {
    config::parse(text, name).unwrap_or_else(|e| panic!("{name}: tidegate rejects this config; fix it:\n{e}"))
}

fn max_drain_timeout(config: &Config) -> Duration {
    config.pools.iter().map(|p| p.drain.timeout).max().unwrap_or(DEFAULT_DRAIN_TIMEOUT)
}

fn max_drain_spread(config: &Config) -> Duration {
    config.pools.iter().map(|p| p.drain.spread).max().unwrap_or(config::DEFAULT_DRAIN_SPREAD)
}

// ---------------------------------------------------------------------------
// Kubernetes manifests.

/// One YAML document of one manifest file.
struct Doc {
    file: String,
    value: Value,
}

impl Doc {
    fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// Every document of every `*.yaml`/`*.yml` in deploy/kubernetes, in file order.
fn manifests() -> Vec<Doc> {
    let dir = root().join(K8S_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{K8S_DIR}: cannot list it ({e})"))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{K8S_DIR}: no manifests (*.yaml) found");
    let mut docs = Vec::new();
    for path in files {
        let file = path.strip_prefix(root()).unwrap_or(&path).display().to_string();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: cannot read it ({e})"));
        for (i, de) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let value = Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: YAML document {} does not parse: {e}", i + 1));
            if !value.is_null() {
                docs.push(Doc { file: file.clone(), value });
            }
        }
    }
    docs
}

/// The one document of `kind` named `name` (any name when `None`).
fn find<'a>(docs: &'a [Doc], kind: &str, name: Option<&str>) -> &'a Doc {
    let found: Vec<&Doc> = docs.iter().filter(|d| d.kind() == kind && name.is_none_or(|n| d.name() == n)).collect();
    match found.as_slice() {
        [one] => one,
        [] => {
            panic!("{K8S_DIR}: no {kind}{} found; add one", name.map(|n| format!(" named {n:?}")).unwrap_or_default())
        }
        many => {
            let files: Vec<&str> = many.iter().map(|d| d.file.as_str()).collect();
            panic!("{K8S_DIR}: {} {kind} manifests ({files:?}); the test expects exactly one", many.len())
        }
    }
}

fn as_u64(v: &Value, file: &str, what: &str) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{file}: {what} must be a whole number of seconds, found {v:?}"))
}

fn as_list<'a>(v: &'a Value, file: &str, what: &str) -> &'a [Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or_else(|| panic!("{file}: {what} must be a list, found {v:?}"))
}

/// The Deployment's pieces the checks look at.
struct Pod<'a> {
    deployment: &'a Doc,
    spec: &'a Value,
    container: &'a Value,
}

impl<'a> Pod<'a> {
    fn new(docs: &'a [Doc]) -> Self {
        let deployment = find(docs, "Deployment", Some("tidegate"));
        let spec = &deployment.value["spec"]["template"]["spec"];
        let containers = as_list(&spec["containers"], DEPLOYMENT, "spec.template.spec.containers");
        let container = containers
            .iter()
            .find(|c| c["name"].as_str() == Some("tidegate"))
            .unwrap_or_else(|| panic!("{DEPLOYMENT}: no container named \"tidegate\""));
        Pod { deployment, spec, container }
    }

    /// The number a container port reference (a number or a port name) stands for.
    fn port(&self, port: &Value, what: &str) -> u16 {
        if let Some(n) = port.as_u64() {
            return u16::try_from(n).unwrap_or_else(|_| panic!("{DEPLOYMENT}: {what}: {n} is not a port"));
        }
        let name = port.as_str().unwrap_or_else(|| panic!("{DEPLOYMENT}: {what} must be a number or a port name"));
        let ports = as_list(&self.container["ports"], DEPLOYMENT, "the tidegate container's ports");
        let found = ports.iter().find(|p| p["name"].as_str() == Some(name)).unwrap_or_else(|| {
            panic!("{DEPLOYMENT}: {what} names port {name:?}, which the tidegate container does not declare")
        });
        self.port(&found["containerPort"], &format!("the containerPort of port {name:?}"))
    }

    fn container_ports(&self) -> Vec<u16> {
        as_list(&self.container["ports"], DEPLOYMENT, "the tidegate container's ports")
            .iter()
            .map(|p| self.port(&p["containerPort"], "a containerPort"))
            .collect()
    }

    /// The `--config FILE` the container runs with.
    fn config_path(&self) -> String {
        let args: Vec<&str> =
            self.container["args"].as_sequence().into_iter().flatten().filter_map(Value::as_str).collect();
        assert_eq!(args.first(), Some(&"run"), "{DEPLOYMENT}: the tidegate container's args must start with \"run\"");
        let at = args.iter().position(|a| *a == "--config");
        let path = at.and_then(|i| args.get(i + 1));
        path.unwrap_or_else(|| panic!("{DEPLOYMENT}: the container's args must pass --config FILE")).to_string()
    }

    /// The preStop pause in seconds: `sleep: {seconds: N}` or `exec: ["sleep", "N"]`.
    fn pre_stop_seconds(&self) -> u64 {
        let hook = &self.container["lifecycle"]["preStop"];
        if hook.is_null() {
            panic!(
                "{DEPLOYMENT}: the tidegate container has no lifecycle.preStop; add a pause (sleep 5) so endpoints are removed before SIGTERM"
            );
        }
        if !hook["sleep"].is_null() {
            return as_u64(&hook["sleep"]["seconds"], DEPLOYMENT, "lifecycle.preStop.sleep.seconds");
        }
        let command: Vec<&str> = as_list(&hook["exec"]["command"], DEPLOYMENT, "lifecycle.preStop.exec.command")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        match command.as_slice() {
            [sleep, n] if sleep.ends_with("sleep") => n
                .parse()
                .unwrap_or_else(|_| panic!("{DEPLOYMENT}: preStop sleeps {n:?}: write whole seconds, like \"5\"")),
            _ => panic!(
                "{DEPLOYMENT}: preStop is {command:?}; this test understands [\"sleep\", \"N\"] and sleep: {{seconds: N}}"
            ),
        }
    }
}

/// The ConfigMap key holding the file the container reads, found through the
/// container's `--config`, its volume mount and the volume.
fn embedded_config(docs: &[Doc], pod: &Pod) -> (String, String) {
    let path = pod.config_path();
    let (dir, file) =
        path.rsplit_once('/').unwrap_or_else(|| panic!("{DEPLOYMENT}: --config {path:?} is not absolute"));
    let mounts = as_list(&pod.container["volumeMounts"], DEPLOYMENT, "the tidegate container's volumeMounts");
    let mount = mounts.iter().find(|m| m["mountPath"].as_str() == Some(dir)).unwrap_or_else(|| {
        panic!("{DEPLOYMENT}: nothing is mounted at {dir:?}, where --config {path:?} lives; mount the ConfigMap there")
    });
    assert!(
        mount["subPath"].is_null(),
        "{DEPLOYMENT}: the config is mounted with subPath, which never receives ConfigMap updates; mount the directory"
    );
    let volume_name = mount["name"].as_str().unwrap_or_default();
    let volumes = as_list(&pod.spec["volumes"], DEPLOYMENT, "spec.template.spec.volumes");
    let volume = volumes.iter().find(|v| v["name"].as_str() == Some(volume_name)).unwrap_or_else(|| {
        panic!("{DEPLOYMENT}: the mount at {dir:?} uses volume {volume_name:?}, which is not declared")
    });
    let cm_name = volume["configMap"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("{DEPLOYMENT}: volume {volume_name:?} must be a configMap volume"));
    let key = match volume["configMap"]["items"].as_sequence() {
        None => file.to_string(),
        Some(items) => items
            .iter()
            .find(|i| i["path"].as_str() == Some(file))
            .and_then(|i| i["key"].as_str())
            .unwrap_or_else(|| panic!("{DEPLOYMENT}: volume {volume_name:?} maps no ConfigMap key to {file:?}"))
            .to_string(),
    };
    let cm = find(docs, "ConfigMap", Some(cm_name));
    assert_eq!(cm.file, CONFIGMAP, "ConfigMap {cm_name:?} is expected in {CONFIGMAP}");
    let text = cm.value["data"][key.as_str()].as_str().unwrap_or_else(|| {
        panic!("{CONFIGMAP}: ConfigMap {cm_name:?} has no data key {key:?}, which the Deployment mounts")
    });
    (format!("{CONFIGMAP} (data.{key})"), text.to_string())
}

#[test]
fn every_manifest_parses_and_has_a_kind_and_a_name() {
    let docs = manifests();
    for d in &docs {
        assert!(
            d.value["apiVersion"].as_str().is_some_and(|s| !s.is_empty()),
            "{}: a document has no apiVersion",
            d.file
        );
        assert!(!d.kind().is_empty(), "{}: a document has no kind", d.file);
        assert!(!d.name().is_empty(), "{}: the {} has no metadata.name", d.file, d.kind());
        assert!(
            d.value["metadata"]["namespace"].is_null(),
            "{}: leave metadata.namespace out (kubectl -n picks it)",
            d.file
        );
    }
    for (kind, file) in [("ConfigMap", CONFIGMAP), ("Deployment", DEPLOYMENT), ("Service", SERVICE)] {
        let doc = docs.iter().find(|d| d.kind() == kind).unwrap_or_else(|| panic!("{file}: no {kind} found; add it"));
        assert_eq!(doc.file, file, "the {kind} is expected in {file}");
    }
    // Whatever selects the pods (Service, PodDisruptionBudget, NetworkPolicy)
    // must select the Deployment's pods.
    let pod = Pod::new(&docs);
    let labels = &pod.deployment.value["spec"]["template"]["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector.as_mapping().is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| labels.get(k) == Some(v)))
    };
    assert!(
        selects(&pod.deployment.value["spec"]["selector"]["matchLabels"]),
        "{DEPLOYMENT}: spec.selector.matchLabels must match spec.template.metadata.labels"
    );
    for d in &docs {
        let selector = match d.kind() {
            "Service" => &d.value["spec"]["selector"],
            "PodDisruptionBudget" => &d.value["spec"]["selector"]["matchLabels"],
            "NetworkPolicy" => &d.value["spec"]["podSelector"]["matchLabels"],
            _ => continue,
        };
        assert!(
            selects(selector),
            "{}: the {} {:?} does not select the tidegate pods' labels",
            d.file,
            d.kind(),
            d.name()
        );
    }
}

#[test]
fn configmap_config_is_valid_and_reachable_by_the_probes() {
    let docs = manifests();
    let pod = Pod::new(&docs);
    let (name, text) = embedded_config(&docs, &pod);
    let config = parse_config(&text, &name);

    let admin = config.admin.bind;
    assert!(
        !admin.ip().is_loopback(),
        "{name}: admin.bind is {admin}, which the kubelet cannot probe; bind 0.0.0.0:PORT with allow_remote = true"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &pod.container[probe]["httpGet"];
        assert!(!get.is_null(), "{DEPLOYMENT}: the tidegate container needs a {probe} with httpGet {path}");
        assert_eq!(get["path"].as_str(), Some(path), "{DEPLOYMENT}: {probe}.httpGet.path must be {path}");
        let port = pod.port(&get["port"], &format!("{probe}.httpGet.port"));
        assert_eq!(
            port,
            admin.port(),
            "{DEPLOYMENT}: {probe} probes port {port}, but {name} binds the admin endpoint on {admin}; make them agree"
        );
    }

    let declared = pod.container_ports();
    for listener in &config.listeners {
        let port = listener.bind.port();
        assert!(
            declared.contains(&port),
            "{DEPLOYMENT}: listener {:?} binds {}, but the container declares no containerPort {port}",
            listener.name,
            listener.bind
        );
    }

    // The public Service reaches a listener and never the admin endpoint.
    let service = find(&docs, "Service", Some("tidegate"));
    let ports = as_list(&service.value["spec"]["ports"], SERVICE, "spec.ports");
    assert!(!ports.is_empty(), "{SERVICE}: the Service exposes no port");
    for p in ports {
        let target = if p["targetPort"].is_null() { &p["port"] } else { &p["targetPort"] };
        let target = pod.port(target, &format!("{SERVICE}: targetPort {target:?}"));
        assert_ne!(target, admin.port(), "{SERVICE}: the public Service exposes the admin port {target}; remove it");
        assert!(
            config.listeners.iter().any(|l| l.bind.port() == target),
            "{SERVICE}: port {target} is no listener of {name}; point targetPort at a listener's port"
        );
    }
}

#[test]
fn deployment_grace_period_holds_prestop_and_the_whole_drain() {
    let docs = manifests();
    let pod = Pod::new(&docs);
    let (name, text) = embedded_config(&docs, &pod);
    let config = parse_config(&text, &name);

    let grace = match &pod.spec["terminationGracePeriodSeconds"] {
        Value::Null => 30, // the Kubernetes default
        v => as_u64(v, DEPLOYMENT, "terminationGracePeriodSeconds"),
    };
    let grace = Duration::from_secs(grace);
    let pre_stop = Duration::from_secs(pod.pre_stop_seconds());
    let drain = max_drain_timeout(&config);
    assert!(
        pre_stop > Duration::ZERO && pre_stop < grace,
        "{DEPLOYMENT}: the preStop pause ({pre_stop:?}) must be above zero and below terminationGracePeriodSeconds ({grace:?})"
    );
    assert!(
        pre_stop + drain + MARGIN <= grace,
        "{DEPLOYMENT}: terminationGracePeriodSeconds is {}s, but preStop {pre_stop:?} + the largest drain.timeout in {name} \
         ({drain:?}) + a margin of {MARGIN:?} need {}s; raise terminationGracePeriodSeconds or lower drain.timeout",
        grace.as_secs(),
        (pre_stop + drain + MARGIN).as_secs()
    );

    // A rolling deploy replaces one pod at a time and never loses capacity,
    // and the next pod starts draining only after the last one's reconnects.
    let deployment = &pod.deployment.value["spec"];
    let rolling = &deployment["strategy"]["rollingUpdate"];
    let unavailable = &rolling["maxUnavailable"];
    assert!(
        unavailable.as_u64() == Some(0) || unavailable.as_str() == Some("0%"),
        "{DEPLOYMENT}: strategy.rollingUpdate.maxUnavailable must be 0, so no pod drains before its replacement is ready"
    );
    let min_ready = Duration::from_secs(deployment["minReadySeconds"].as_u64().unwrap_or(0));
    let spread = max_drain_spread(&config);
    assert!(
        min_ready >= spread,
        "{DEPLOYMENT}: minReadySeconds ({min_ready:?}) is below the largest drain.spread in {name} ({spread:?}); \
         raise it so one pod's reconnect wave ends before the next pod drains"
    );

    // Non-root, read-only root filesystem.
    let non_root = |v: &Value| v["securityContext"]["runAsNonRoot"].as_bool() == Some(true);
    assert!(
        non_root(pod.spec) || non_root(pod.container),
        "{DEPLOYMENT}: set securityContext.runAsNonRoot: true (pod or container)"
    );
    assert_eq!(
        pod.container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true),
        "{DEPLOYMENT}: set the tidegate container's securityContext.readOnlyRootFilesystem: true"
    );
    for limit in ["requests", "limits"] {
        assert!(
            pod.container["resources"][limit]["memory"].as_str().is_some(),
            "{DEPLOYMENT}: set resources.{limit}.memory on the tidegate container"
        );
    }
}

/// `check` on the real binary accepts the configs deploy/ ships.
#[test]
fn tidegate_check_accepts_the_shipped_configs() {
    let docs = manifests();
    let pod = Pod::new(&docs);
    let (_, embedded) = embedded_config(&docs, &pod);
    let image = read(IMAGE_CONFIG);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    for (label, file, text) in [(CONFIGMAP, "configmap.toml", embedded), (IMAGE_CONFIG, "image.toml", image)] {
        let path = dir.join(file);
        std::fs::write(&path, text).expect("writing the temporary config");
        let out = Command::new(env!("CARGO_BIN_EXE_tidegate"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("running tidegate check");
        assert!(
            out.status.success(),
            "{label}: `tidegate check` refuses the config ({}); fix it:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// systemd.

/// `[Service]` settings of the unit: key to every value it is given, in order.
fn unit_service_section() -> BTreeMap<String, Vec<String>> {
    let text = read(UNIT);
    let mut section = String::new();
    let mut settings: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        let line = std::mem::take(&mut pending) + line;
        if line.starts_with('[') {
            section = line.trim_matches(['[', ']']).to_string();
        } else if section == "Service" {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{UNIT}: cannot read the line {line:?}"));
            settings.entry(key.trim().to_string()).or_default().push(value.trim().to_string());
        }
    }
    settings
}

/// A systemd time span: `45`, `45s`, `1min 30s`, `2m`, `500ms`.
fn systemd_span(s: &str) -> Duration {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    assert!(!rest.is_empty() && rest != "infinity", "{UNIT}: TimeoutStopSec={s:?} must be a finite time span");
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let n: u64 = rest[..digits].parse().unwrap_or_else(|_| panic!("{UNIT}: cannot read the time span {s:?}"));
        rest = rest[digits..].trim_start();
        let unit_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = rest[unit_len..].trim_start();
        total += match unit {
            "ms" | "msec" => Duration::from_millis(n),
            "" | "s" | "sec" | "second" | "seconds" => Duration::from_secs(n),
            "m" | "min" | "minute" | "minutes" => Duration::from_secs(n * 60),
            "h" | "hr" | "hour" | "hours" => Duration::from_secs(n * 3600),
            _ => panic!("{UNIT}: unknown unit {unit:?} in the time span {s:?}"),
        };
    }
    total
}

#[test]
fn systemd_unit_reloads_with_hup_and_outlasts_the_drain() {
    let unit = unit_service_section();
    let one = |key: &str| -> &str {
        match unit.get(key).map(Vec::as_slice) {
            Some([value]) => value,
            Some(values) => panic!("{UNIT}: {key}= is set {} times; set it once", values.len()),
            None => panic!("{UNIT}: [Service] has no {key}=; add it"),
        }
    };
    let all = |key: &str| unit.get(key).cloned().unwrap_or_default();

    let stop = systemd_span(one("TimeoutStopSec"));
    assert!(
        stop >= DEFAULT_DRAIN_TIMEOUT + MARGIN,
        "{UNIT}: TimeoutStopSec ({stop:?}) must exceed the default drain.timeout ({DEFAULT_DRAIN_TIMEOUT:?}) by at least {MARGIN:?}"
    );
    let example = config::load(&root().join(EXAMPLE)).unwrap_or_else(|e| panic!("{EXAMPLE} does not validate:\n{e}"));
    let drain = max_drain_timeout(&example);
    assert!(
        stop >= drain + MARGIN,
        "{UNIT}: TimeoutStopSec ({stop:?}) must exceed the largest drain.timeout in {EXAMPLE} ({drain:?}) by at least {MARGIN:?}; \
         raise TimeoutStopSec"
    );
    assert_eq!(one("KillSignal"), "SIGTERM", "{UNIT}: KillSignal must be SIGTERM (tidegate drains on it)");

    let config_path = "/etc/tidegate/tidegate.toml";
    let start = one("ExecStart");
    assert!(
        start.ends_with(&format!("tidegate run --config {config_path}")),
        "{UNIT}: ExecStart= must run `tidegate run --config {config_path}`, not {start:?}"
    );
    let binary = start.split_whitespace().next().unwrap_or_default();
    assert!(binary.starts_with('/'), "{UNIT}: ExecStart= must name the binary by an absolute path");
    let check = format!("{binary} check --config {config_path}");
    assert!(
        all("ExecStartPre").iter().any(|v| v.trim_start_matches(['-', '@', '+', '!']) == check),
        "{UNIT}: add ExecStartPre={check}, so an invalid config never starts"
    );
    let reload = all("ExecReload");
    assert!(
        reload.iter().any(|v| v.contains("kill -HUP $MAINPID") || v.contains("kill -s HUP $MAINPID")),
        "{UNIT}: ExecReload= must send SIGHUP: ExecReload=/bin/kill -HUP $MAINPID (found {reload:?})"
    );
    assert_eq!(one("Restart"), "on-failure", "{UNIT}: set Restart=on-failure");

    let user = one("User");
    assert!(user != "root" && user != "0", "{UNIT}: User= must be a dedicated unprivileged user, not {user:?}");
    assert_eq!(one("NoNewPrivileges"), "yes", "{UNIT}: set NoNewPrivileges=yes");
    assert_eq!(one("ProtectSystem"), "strict", "{UNIT}: set ProtectSystem=strict");
    assert_eq!(one("PrivateTmp"), "yes", "{UNIT}: set PrivateTmp=yes");
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        assert_eq!(one(key), "CAP_NET_BIND_SERVICE", "{UNIT}: {key}= must grant CAP_NET_BIND_SERVICE and nothing else");
    }
    let nofile: u64 = one("LimitNOFILE").parse().unwrap_or_else(|_| panic!("{UNIT}: LimitNOFILE= must be a number"));
    let needed = 2 * example.limits.max_connections as u64;
    assert!(
        nofile > needed,
        "{UNIT}: LimitNOFILE={nofile} is too low for {EXAMPLE}'s max_connections (two descriptors per tunnel: over {needed})"
    );
}

// ---------------------------------------------------------------------------
// Containerfile.

/// The Containerfile's instructions as (KEYWORD, arguments), continuations joined.
fn containerfile() -> Vec<(String, String)> {
    let text = read(CONTAINERFILE);
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (pending.is_empty() && trimmed.is_empty()) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        let full = std::mem::take(&mut pending) + trimmed;
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
    }
    out
}

fn version(s: &str) -> Vec<u32> {
    s.split('.').map(|p| p.parse().unwrap_or_else(|_| panic!("cannot read the version {s:?}"))).collect()
}

#[test]
fn containerfile_is_multi_stage_and_runs_as_non_root() {
    let instructions = containerfile();
    let args: BTreeMap<&str, &str> =
        instructions.iter().filter(|(k, _)| k == "ARG").filter_map(|(_, a)| a.split_once('=')).collect();
    let stages: Vec<usize> =
        instructions.iter().enumerate().filter(|(_, (k, _))| k == "FROM").map(|(i, _)| i).collect();
    assert!(
        stages.len() >= 2,
        "{CONTAINERFILE}: use a multi-stage build (a Rust builder stage, then a slim runtime stage)"
    );

    // The builder's Rust is at least the crate's rust-version.
    let (_, builder) = &instructions[stages[0]];
    let image = builder.split_whitespace().next().unwrap_or_default();
    let mut image = image.to_string();
    for (name, value) in &args {
        image = image.replace(&format!("${{{name}}}"), value);
    }
    let short = image.rsplit('/').next().unwrap_or_default();
    let tag = short.strip_prefix("rust:");
    let tag =
        tag.unwrap_or_else(|| panic!("{CONTAINERFILE}: the first stage must build FROM a rust image, not {image:?}"));
    let rust = tag.split('-').next().unwrap_or_default();
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml parses");
    let msrv = manifest["package"]["rust-version"].as_str().expect("Cargo.toml has package.rust-version");
    assert!(
        version(rust) >= version(msrv),
        "{CONTAINERFILE}: the builder uses Rust {rust}, below Cargo.toml's rust-version {msrv}; raise RUST_VERSION"
    );

    // The runtime stage: the last one.
    let runtime = &instructions[*stages.last().unwrap_or(&0)..];
    let last = |keyword: &str| runtime.iter().rev().find(|(k, _)| k == keyword).map(|(_, a)| a.as_str());
    let user =
        last("USER").unwrap_or_else(|| panic!("{CONTAINERFILE}: the runtime stage has no USER; add USER 10001:10001"));
    let uid = user.split(':').next().unwrap_or_default();
    let numeric: Option<u32> = uid.parse().ok();
    assert!(
        numeric.is_some_and(|n| n != 0),
        "{CONTAINERFILE}: USER {user} must be a numeric non-root uid (Kubernetes' runAsNonRoot cannot verify names)"
    );
    assert!(
        runtime.iter().any(|(k, a)| k == "COPY" && a.starts_with("--from=")),
        "{CONTAINERFILE}: the runtime stage must COPY --from= the builder stage"
    );
    assert_eq!(last("STOPSIGNAL"), Some("SIGTERM"), "{CONTAINERFILE}: set STOPSIGNAL SIGTERM (tidegate drains on it)");

    let exec_form = |keyword: &str| -> Vec<String> {
        let raw = last(keyword).unwrap_or_else(|| panic!("{CONTAINERFILE}: the runtime stage has no {keyword}"));
        serde_json::from_str(raw).unwrap_or_else(|_| {
            panic!("{CONTAINERFILE}: write {keyword} in exec form (a JSON list), so signals reach tidegate")
        })
    };
    let entrypoint = exec_form("ENTRYPOINT");
    assert!(
        entrypoint.len() == 1 && entrypoint[0].ends_with("tidegate"),
        "{CONTAINERFILE}: ENTRYPOINT must be [\"tidegate\"], not {entrypoint:?}"
    );
    let cmd = exec_form("CMD");
    assert_eq!(
        cmd,
        ["run", "--config", "/etc/tidegate/tidegate.toml"],
        "{CONTAINERFILE}: CMD must run the config at /etc/tidegate"
    );

    // The config baked into the image is valid and its listeners are exposed.
    let baked = parse_config(&read(IMAGE_CONFIG), IMAGE_CONFIG);
    let exposed: Vec<u16> = runtime
        .iter()
        .filter(|(k, _)| k == "EXPOSE")
        .flat_map(|(_, a)| a.split_whitespace())
        .filter_map(|p| p.split('/').next()?.parse().ok())
        .collect();
    for listener in &baked.listeners {
        assert!(
            exposed.contains(&listener.bind.port()),
            "{CONTAINERFILE}: EXPOSE lacks port {}, where {IMAGE_CONFIG}'s listener {:?} listens",
            listener.bind.port(),
            listener.name
        );
    }
    assert!(
        runtime
            .iter()
            .any(|(k, a)| k == "COPY" && a.contains(IMAGE_CONFIG) && a.ends_with("/etc/tidegate/tidegate.toml")),
        "{CONTAINERFILE}: COPY {IMAGE_CONFIG} to /etc/tidegate/tidegate.toml, the path CMD runs"
    );
}

#[test]
fn deploy_readme_explains_the_timeouts() {
    let readme = read("deploy/README.md");
    for topic in ["terminationGracePeriodSeconds", "TimeoutStopSec", "drain.timeout", "maxUnavailable", "SIGHUP"] {
        assert!(readme.contains(topic), "deploy/README.md: explain {topic}");
    }
}
