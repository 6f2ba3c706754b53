//! The deployment artefacts (SPEC §8): the systemd unit and its config, the container image
//! recipe and the Kubernetes example. Nothing here starts a cluster or a container; the
//! checks are what can be proven on a build machine: systemd's own analysers, the real
//! binary's `check`, and the cross-file consistency the example relies on (ports, paths,
//! names).
//!
//! `systemd-analyze` comes from the `systemd` package (`scripts/deps.sh test`),
//! `kubernetes-validate` (the Kubernetes OpenAPI schemas, strict) from
//! `scripts/gateway-tools.sh`. Without one, its tests print a SKIP line, except under CI
//! (the `CI` variable set), where they fail.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use yaml_rust2::{Yaml, YamlLoader};

const BIN: &str = env!("CARGO_BIN_EXE_released-sidecar");
/// The binary path the shipped unit uses.
const INSTALLED_BIN: &str = "/usr/local/bin/released-sidecar";
const UNIT: &str = "systemd/released-sidecar.service";
const SYSTEMD_CONFIG: &str = "systemd/config.yaml";
const KUBE_DIR: &str = "deploy/kubernetes";
const DOCKERFILE: &str = "deploy/Dockerfile";
const MAX_EXPOSURE: f64 = 2.0;

// ---------------------------------------------------------------------------------------
// helpers

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let path = repo(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The sidecar binary with a clean config environment.
fn sidecar() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("RELEASED_SIDECAR_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY");
    cmd
}

/// Whether `tool` can run. Missing: a failure under CI, a visible SKIP elsewhere.
fn tool_available(tool: &str) -> bool {
    support::tools::require(tool, &["--version"], "scripts/deps.sh test installs it").is_some()
}

/// `1500ms`, `30s`, `1m`: the duration syntax shared by the config and these units.
fn duration(value: &str) -> Duration {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("`{value}` is not a duration"));
    match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n * 60),
        _ => panic!("`{value}`: unknown duration unit"),
    }
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("`{addr}` is not host:port: {e}"))
        .port()
}

fn url(value: &str) -> url::Url {
    url::Url::parse(value).unwrap_or_else(|e| panic!("`{value}` is not a URL: {e}"))
}

fn is_loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

fn str_at<'a>(yaml: &'a Yaml, what: &str) -> &'a str {
    yaml.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {yaml:?}"))
}

fn vec_at<'a>(yaml: &'a Yaml, what: &str) -> &'a [Yaml] {
    yaml.as_vec()
        .unwrap_or_else(|| panic!("{what}: expected a list, found {yaml:?}"))
}

fn strings(yaml: &Yaml, what: &str) -> Vec<String> {
    vec_at(yaml, what)
        .iter()
        .map(|y| str_at(y, what).to_string())
        .collect()
}

/// Whether every key/value of the mapping `subset` is in the mapping `of`.
fn labels_match(subset: &Yaml, of: &Yaml) -> bool {
    let (Some(subset), Some(of)) = (subset.as_hash(), of.as_hash()) else {
        return false;
    };
    !subset.is_empty() && subset.iter().all(|(k, v)| of.get(k) == Some(v))
}

// ---------------------------------------------------------------------------------------
// systemd unit

/// `Key=value` lines of a unit file, in order (sections are not told apart: the keys used
/// here are unique to [Service]).
fn unit_entries(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit_entries(unit)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

fn unit_value(unit: &str, key: &str) -> String {
    let values = unit_values(unit, key);
    assert_eq!(values.len(), 1, "{key}= should appear once: {values:?}");
    values.into_iter().next().unwrap()
}

/// The unit copied to a temp dir under its own name, with the binary path pointing at the
/// freshly built binary (`systemd-analyze verify` checks that the executable exists).
fn unit_with_built_binary() -> (tempfile::TempDir, PathBuf) {
    let original = read(UNIT);
    assert!(
        original.contains(&format!("ExecStart={INSTALLED_BIN} ")),
        "the unit should run {INSTALLED_BIN}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("released-sidecar.service");
    std::fs::write(&path, original.replace(INSTALLED_BIN, BIN)).unwrap();
    (dir, path)
}

fn systemd_config() -> Yaml {
    YamlLoader::load_from_str(&read(SYSTEMD_CONFIG))
        .expect("systemd/config.yaml parses")
        .remove(0)
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    if !tool_available("systemd-analyze") {
        return;
    }
    let (_dir, unit) = unit_with_built_binary();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let report = text(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{report}"
    );
    // verify only warns (exit 0) about unknown keys and unparsable values: fail on those too.
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let complaints: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("released-sidecar.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify complained about the unit:\n{report}"
    );
}

#[test]
fn systemd_analyze_security_rates_the_unit_exposure_at_most_2_0() {
    if !tool_available("systemd-analyze") {
        return;
    }
    let (_dir, unit) = unit_with_built_binary();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level for"))
        .unwrap_or_else(|| panic!("no overall exposure line in:\n{report}"));
    let (_, rating) = line.rsplit_once(": ").unwrap();
    let exposure: f64 = rating
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure from `{line}`"));
    eprintln!("{}", line.trim());
    assert!(
        exposure <= MAX_EXPOSURE,
        "exposure {exposure} is above {MAX_EXPOSURE}:\n{stdout}"
    );
}

#[test]
fn the_unit_checks_before_starting_reloads_on_sighup_and_outlasts_the_drain() {
    let unit = read(UNIT);
    let config = systemd_config();
    // The sidecar sends READY=1 itself, and a SIGUSR2 successor sends MAINPID=
    // (tests/upgrade.rs), which systemd accepts only with NotifyAccess=all.
    assert_eq!(unit_value(&unit, "Type"), "notify");
    assert_eq!(unit_value(&unit, "NotifyAccess"), "all");
    // The upgrade socket lives in the unit's runtime directory.
    let runtime = format!("/run/{}/", unit_value(&unit, "RuntimeDirectory"));
    let upgrade_sock = config["upgrade_sock"].as_str().unwrap_or_default();
    assert!(
        upgrade_sock.starts_with(&runtime),
        "systemd/config.yaml puts upgrade_sock ({upgrade_sock}) in {runtime}"
    );
    // No other local user may see, or make first, the upgrade socket's directory or a
    // file in the unit's /tmp (README "Local users").
    assert_eq!(unit_value(&unit, "RuntimeDirectoryMode"), "0700");
    assert_eq!(unit_value(&unit, "PrivateTmp"), "yes");
    assert_eq!(unit_value(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(unit_value(&unit, "DynamicUser"), "yes");
    assert_eq!(unit_value(&unit, "KillSignal"), "SIGTERM");
    assert_eq!(unit_value(&unit, "Restart"), "on-failure");

    // `check` (with secrets: no --skip-secrets) and `run` read the same config.
    let config_path = "/etc/released-sidecar/config.yaml";
    assert_eq!(
        unit_value(&unit, "ExecStartPre"),
        format!("{INSTALLED_BIN} check --config {config_path}")
    );
    assert_eq!(
        unit_value(&unit, "ExecStart"),
        format!("{INSTALLED_BIN} run --config {config_path}")
    );

    // The credential's name is the file the config reads from $CREDENTIALS_DIRECTORY.
    let credential = unit_value(&unit, "LoadCredential");
    let (name, source) = credential
        .split_once(':')
        .expect("LoadCredential=NAME:PATH");
    assert_eq!(source, "/etc/released-sidecar/shared-secret");
    assert_eq!(
        str_at(
            &config["released"]["shared_secret_file"],
            "released.shared_secret_file"
        ),
        format!("${{CREDENTIALS_DIRECTORY}}/{name}")
    );

    // systemd must not SIGKILL while in-flight requests are still draining.
    let grace = duration(str_at(
        &config["timeouts"]["shutdown_grace"],
        "timeouts.shutdown_grace",
    ));
    let stop = duration(&unit_value(&unit, "TimeoutStopSec"));
    assert!(
        stop > grace,
        "TimeoutStopSec {stop:?} must exceed shutdown_grace {grace:?}"
    );

    // Empty capability sets and the seccomp filter the README promises.
    assert_eq!(unit_value(&unit, "CapabilityBoundingSet"), "");
    assert_eq!(unit_value(&unit, "AmbientCapabilities"), "");
    assert_eq!(
        unit_values(&unit, "SystemCallFilter"),
        ["@system-service", "~@privileged @resources"]
    );
    assert_eq!(
        unit_value(&unit, "RestrictAddressFamilies"),
        "AF_INET AF_INET6 AF_UNIX"
    );
}

#[test]
fn systemd_config_passes_check_with_the_secret_from_the_credentials_directory() {
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("shared-secret"), "deploy-test-secret\n").unwrap();
    let config = repo(SYSTEMD_CONFIG);

    let out = sidecar()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .env("CREDENTIALS_DIRECTORY", creds.path())
        .output()
        .unwrap();
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "secret from file {}",
        creds.path().join("shared-secret").display()
    );
    assert!(stdout.contains(&expected), "{report}");
    assert!(!stdout.contains("deploy-test-secret"), "{report}");

    // Outside systemd the variable is missing, and `check` says so.
    let out = sidecar()
        .arg("check")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CREDENTIALS_DIRECTORY"),
        "{}",
        text(&out)
    );
}

#[test]
fn config_example_passes_the_check_command_its_header_suggests() {
    // Run exactly what a newcomer copies from the file's header, from the repository root.
    let example = read("config.example.yaml");
    let command = example
        .lines()
        .find_map(|l| l.strip_prefix("# Validate with:"))
        .expect("config.example.yaml says how to validate it");
    let words: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"released-sidecar"), "{command}");
    assert!(words.contains(&"--skip-secrets"), "{command}");
    let out = sidecar()
        .args(&words[1..])
        .current_dir(repo(""))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("config OK: "),
        "{}",
        text(&out)
    );
}

// ---------------------------------------------------------------------------------------
// Dockerfile

/// Dockerfile instructions (`INSTRUCTION args`), continuation lines joined, comments dropped.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read(DOCKERFILE).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((instruction.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

/// The image's default config path (its `ENV RELEASED_SIDECAR_CONFIG=`).
fn image_config_path() -> String {
    dockerfile_instructions()
        .into_iter()
        .filter(|(i, _)| i == "ENV")
        .find_map(|(_, args)| {
            args.strip_prefix("RELEASED_SIDECAR_CONFIG=")
                .map(str::to_string)
        })
        .expect("ENV RELEASED_SIDECAR_CONFIG=... in the Dockerfile")
}

#[test]
fn dockerfile_builds_the_locked_release_binary_into_a_nonroot_distroless_image() {
    let instructions = dockerfile_instructions();
    let all = |name: &str| -> Vec<String> {
        instructions
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.clone())
            .collect()
    };
    let from = all("FROM");
    assert_eq!(
        from,
        [
            "rust:1-bookworm AS builder",
            "gcr.io/distroless/cc-debian12:nonroot"
        ]
    );
    let runs = all("RUN").join("\n");
    assert!(
        runs.contains("install -y --no-install-recommends cmake"),
        "{runs}"
    );
    assert!(
        runs.contains("cargo build --release --locked --bin released-sidecar"),
        "{runs}"
    );
    assert!(
        all("COPY")
            .iter()
            .any(|c| c.starts_with("--from=builder ")
                && c.ends_with(" /usr/local/bin/released-sidecar")),
        "{:?}",
        all("COPY")
    );
    let entrypoint: Vec<String> =
        serde_json::from_str(&all("ENTRYPOINT").concat()).expect("ENTRYPOINT in exec form");
    assert_eq!(entrypoint, ["/usr/local/bin/released-sidecar", "run"]);
    assert_eq!(image_config_path(), "/etc/released-sidecar/config.yaml");
    let exposed: BTreeSet<String> = all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert_eq!(exposed, BTreeSet::from(["8080".into(), "9901".into()]));
    // Probes belong to the orchestrator; the image has no shell to run one anyway.
    assert!(all("HEALTHCHECK").is_empty());
    // The last USER wins; it must not be root.
    let user = all("USER").pop().expect("a USER instruction");
    let uid = user.split(':').next().unwrap();
    assert!(
        !matches!(uid, "root" | "0"),
        "the image must not run as root: USER {user}"
    );
    // The build context is the repo root: its .dockerignore keeps build output out.
    let ignore = read(".dockerignore");
    let ignored: Vec<&str> = ignore.lines().map(str::trim).collect();
    assert!(
        ignored.contains(&"target") && ignored.contains(&".git"),
        "{ignore}"
    );
}

// ---------------------------------------------------------------------------------------
// Kubernetes

/// Every YAML document under deploy/kubernetes, with its file name.
fn kube_documents() -> Vec<(String, Yaml)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(KUBE_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let source = std::fs::read_to_string(&file).unwrap();
        let loaded = YamlLoader::load_from_str(&source)
            .unwrap_or_else(|e| panic!("{KUBE_DIR}/{name} does not parse: {e}"));
        assert!(!loaded.is_empty(), "{name}: no YAML document");
        for doc in loaded {
            assert!(
                doc.as_hash().is_some(),
                "{name}: a document is not a mapping"
            );
            docs.push((name.clone(), doc));
        }
    }
    docs
}

/// The Kubernetes example, with the pieces the checks navigate to.
struct Example {
    docs: Vec<(String, Yaml)>,
}

impl Example {
    fn load() -> Example {
        Example {
            docs: kube_documents(),
        }
    }

    fn of_kind(&self, kind: &str) -> Vec<&Yaml> {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"].as_str() == Some(kind))
            .collect()
    }

    fn named(&self, kind: &str, name: &str) -> &Yaml {
        self.of_kind(kind)
            .into_iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }

    fn deployment(&self) -> &Yaml {
        let deployments = self.of_kind("Deployment");
        assert_eq!(deployments.len(), 1, "one Deployment expected");
        deployments[0]
    }

    fn pod(&self) -> &Yaml {
        &self.deployment()["spec"]["template"]
    }

    fn pod_spec(&self) -> &Yaml {
        &self.pod()["spec"]
    }

    /// Every container, init containers included, as (is_init, container).
    fn containers(&self) -> Vec<(bool, &Yaml)> {
        let spec = self.pod_spec();
        let init = spec["initContainers"].as_vec().into_iter().flatten();
        let regular = vec_at(&spec["containers"], "containers").iter();
        init.map(|c| (true, c))
            .chain(regular.map(|c| (false, c)))
            .collect()
    }

    fn container(&self, name: &str) -> (bool, &Yaml) {
        self.containers()
            .into_iter()
            .find(|(_, c)| c["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no container named {name}"))
    }

    fn sidecar(&self) -> &Yaml {
        let (is_init, c) = self.container("released-sidecar");
        assert!(is_init, "released-sidecar must be under initContainers");
        c
    }

    fn volume(&self, name: &str) -> &Yaml {
        vec_at(&self.pod_spec()["volumes"], "volumes")
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no volume named {name}"))
    }

    /// The container's volumeMount at `mount_path`.
    fn mount_at<'a>(&self, container: &'a Yaml, mount_path: &str) -> &'a Yaml {
        vec_at(&container["volumeMounts"], "volumeMounts")
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(mount_path))
            .unwrap_or_else(|| {
                panic!(
                    "{} mounts nothing at {mount_path}",
                    str_at(&container["name"], "name")
                )
            })
    }

    /// The sidecar's config path: its `--config` argument or the image default.
    fn sidecar_config_path(&self) -> String {
        let args = &self.sidecar()["args"];
        let args = if args.is_badvalue() {
            Vec::new()
        } else {
            strings(args, "sidecar args")
        };
        match args.iter().position(|a| a == "--config" || a == "-c") {
            Some(i) => args.get(i + 1).expect("a value after --config").clone(),
            None => image_config_path(),
        }
    }

    /// The sidecar's config.yaml text, found through the mount at the config's directory.
    fn sidecar_config_text(&self) -> String {
        let path = PathBuf::from(self.sidecar_config_path());
        let dir = path.parent().unwrap().to_str().unwrap();
        let key = path.file_name().unwrap().to_str().unwrap();
        let mount = self.mount_at(self.sidecar(), dir);
        assert!(
            mount["subPath"].is_badvalue(),
            "a subPath mount is never updated"
        );
        let volume = self.volume(str_at(&mount["name"], "volumeMount name"));
        let map_name = str_at(&volume["configMap"]["name"], "config volume configMap.name");
        let map = self.named("ConfigMap", map_name);
        str_at(&map["data"][key], "ConfigMap data").to_string()
    }

    fn sidecar_config(&self) -> Yaml {
        YamlLoader::load_from_str(&self.sidecar_config_text())
            .expect("the ConfigMap's config.yaml parses")
            .remove(0)
    }

    /// A container port: a number, or the name of a port of `container`.
    fn resolve_port(&self, container: &Yaml, port: &Yaml) -> u16 {
        if let Some(n) = port.as_i64() {
            return u16::try_from(n).unwrap();
        }
        let name = str_at(port, "port");
        let ports = vec_at(&container["ports"], "ports");
        let found = ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no port named {name}"));
        u16::try_from(found["containerPort"].as_i64().unwrap()).unwrap()
    }

    /// A Service's targetPort, resolved against every container of the Pod:
    /// (container name, port).
    fn resolve_target_port(&self, target: &Yaml) -> (String, u16) {
        if let Some(name) = target.as_str() {
            for (_, c) in self.containers() {
                let hit = c["ports"].as_vec().into_iter().flatten().find_map(|p| {
                    (p["name"].as_str() == Some(name)).then(|| p["containerPort"].as_i64())
                });
                if let Some(Some(port)) = hit {
                    let container = str_at(&c["name"], "name").to_string();
                    return (container, u16::try_from(port).unwrap());
                }
            }
            panic!("no container declares a port named {name}");
        }
        let port = u16::try_from(target.as_i64().expect("targetPort")).unwrap();
        for (_, c) in self.containers() {
            for p in c["ports"].as_vec().into_iter().flatten() {
                if p["containerPort"].as_i64() == Some(i64::from(port)) {
                    return (str_at(&c["name"], "name").to_string(), port);
                }
            }
        }
        panic!("no container declares port {port}");
    }

    fn arg_value(&self, container: &Yaml, flag: &str) -> String {
        let prefix = format!("{flag}=");
        strings(&container["args"], "args")
            .into_iter()
            .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("no {flag}= argument"))
    }
}

#[test]
fn every_kubernetes_manifest_parses_and_declares_what_it_is() {
    let example = Example::load();
    let kinds: BTreeSet<&str> = example
        .docs
        .iter()
        .map(|(file, d)| {
            let kind = d["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: a document has no kind"));
            assert!(
                d["apiVersion"].as_str().is_some(),
                "{file}: {kind} has no apiVersion"
            );
            if kind != "Kustomization" {
                assert!(
                    d["metadata"]["name"].as_str().is_some(),
                    "{file}: {kind} has no metadata.name"
                );
            }
            kind
        })
        .collect();
    for kind in [
        "Kustomization",
        "Deployment",
        "ConfigMap",
        "Secret",
        "Service",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(kind), "no {kind} in {KUBE_DIR}: {kinds:?}");
    }
}

#[test]
fn every_container_has_an_image_and_a_locked_down_security_context() {
    let example = Example::load();
    let pod = example.pod_spec();
    let containers = example.containers();
    assert_eq!(containers.len(), 3, "app, oauth2-proxy and the sidecar");
    for (_, c) in containers {
        let name = str_at(&c["name"], "container name");
        let image = str_at(&c["image"], "image");
        assert!(!image.trim().is_empty(), "{name}: empty image");
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{name}");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            strings(&sc["capabilities"]["drop"], "capabilities.drop"),
            ["ALL"],
            "{name}"
        );
        let non_root = sc["runAsNonRoot"]
            .as_bool()
            .or(pod["securityContext"]["runAsNonRoot"].as_bool());
        assert_eq!(non_root, Some(true), "{name}");
        let seccomp = sc["seccompProfile"]["type"]
            .as_str()
            .or(pod["securityContext"]["seccompProfile"]["type"].as_str());
        assert_eq!(seccomp, Some("RuntimeDefault"), "{name}");
        for bound in ["requests", "limits"] {
            assert!(
                c["resources"][bound]["memory"].as_str().is_some(),
                "{name}: resources.{bound}.memory"
            );
        }
    }
    // The distroless images name their user; runAsNonRoot needs a number to verify.
    assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(65532));
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    // And the sidecar sets its own, whatever the Pod says.
    let sc = &example.sidecar()["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
}

#[test]
fn the_sidecar_is_a_native_sidecar_probed_on_the_admin_port_of_its_config() {
    let example = Example::load();
    let sidecar = example.sidecar();
    assert_eq!(sidecar["restartPolicy"].as_str(), Some("Always"));
    let config = example.sidecar_config();
    let admin_port = port_of(str_at(&config["admin"]["listen"], "admin.listen"));
    let admin_ip: SocketAddr = str_at(&config["admin"]["listen"], "admin.listen")
        .parse()
        .unwrap();
    assert!(
        admin_ip.ip().is_unspecified(),
        "the kubelet probes the Pod IP: admin.listen must be 0.0.0.0"
    );

    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/readyz"),
    ] {
        // The startup probe is optional; the other two are required.
        if probe == "startupProbe" && sidecar[probe].is_badvalue() {
            continue;
        }
        let get = &sidecar[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            example.resolve_port(sidecar, &get["port"]),
            admin_port,
            "{probe} must target admin.listen's port"
        );
    }

    // Prometheus' annotation-based scrape points at the same port.
    let annotations = &example.pod()["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(admin_port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
}

#[test]
fn traffic_flows_service_to_oauth2_proxy_to_sidecar_to_app_over_loopback() {
    let example = Example::load();
    let config = example.sidecar_config();
    let (proxy_is_init, proxy) = example.container("oauth2-proxy");
    let (app_is_init, app) = example.container("app");
    assert!(
        !proxy_is_init && !app_is_init,
        "app and oauth2-proxy are regular containers"
    );
    assert!(str_at(&proxy["image"], "image").starts_with("quay.io/oauth2-proxy/oauth2-proxy:"));

    // oauth2-proxy -> sidecar, over loopback.
    let listen: SocketAddr = str_at(&config["listen"], "listen").parse().unwrap();
    assert!(
        listen.ip().is_loopback(),
        "the sidecar must listen on loopback"
    );
    let upstream = url(&example.arg_value(proxy, "--upstream"));
    assert!(is_loopback_host(&upstream), "{upstream}");
    assert_eq!(upstream.port_or_known_default(), Some(listen.port()));
    assert_eq!(example.arg_value(proxy, "--pass-user-headers"), "true");

    // The sidecar believes only loopback peers, i.e. oauth2-proxy in the same Pod.
    for cidr in strings(&config["trusted_proxies"], "trusted_proxies") {
        let ip: std::net::IpAddr = cidr.split('/').next().unwrap().parse().unwrap();
        assert!(
            ip.is_loopback(),
            "trusted_proxies must be loopback only: {cidr}"
        );
    }

    // sidecar -> app, over loopback.
    let app_url = url(str_at(&config["upstream"], "upstream"));
    assert!(is_loopback_host(&app_url), "{app_url}");
    let app_ports: Vec<i64> = vec_at(&app["ports"], "app ports")
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .collect();
    assert_eq!(
        app_ports,
        [i64::from(app_url.port_or_known_default().unwrap())]
    );

    // Service -> oauth2-proxy, the only way in.
    let service = example.named("Service", "legacy-app");
    assert!(labels_match(
        &service["spec"]["selector"],
        &example.pod()["metadata"]["labels"]
    ));
    let ports = vec_at(&service["spec"]["ports"], "Service ports");
    assert_eq!(ports.len(), 1);
    let (container, port) = example.resolve_target_port(&ports[0]["targetPort"]);
    assert_eq!(container, "oauth2-proxy");
    assert_eq!(port, port_of(&example.arg_value(proxy, "--http-address")));
}

#[test]
fn the_secret_volume_is_mounted_where_the_config_reads_the_shared_secret() {
    let example = Example::load();
    let config = example.sidecar_config();
    let secret_file = PathBuf::from(str_at(
        &config["released"]["shared_secret_file"],
        "released.shared_secret_file",
    ));
    let dir = secret_file.parent().unwrap().to_str().unwrap();
    let key = secret_file.file_name().unwrap().to_str().unwrap();

    let mount = example.mount_at(example.sidecar(), dir);
    assert!(
        mount["subPath"].is_badvalue(),
        "a subPath mount is never updated: rotation would need a restart"
    );
    let volume = example.volume(str_at(&mount["name"], "volumeMount name"));
    assert!(
        volume["secret"]["items"].is_badvalue(),
        "keys are mounted under their own names"
    );
    let secret_name = str_at(&volume["secret"]["secretName"], "secretName");
    let secret = example.named("Secret", secret_name);
    let keys: Vec<&str> = ["stringData", "data"]
        .iter()
        .filter_map(|field| secret[*field].as_hash())
        .flat_map(|h| h.keys().filter_map(Yaml::as_str))
        .collect();
    assert_eq!(keys, [key], "the Secret's key must be the file name");

    // Not as an environment variable: the env cannot change under a running process.
    for env in example.sidecar()["env"].as_vec().into_iter().flatten() {
        assert!(
            env["valueFrom"]["secretKeyRef"]["name"].as_str() != Some(secret_name),
            "the Released secret must come from the volume, not the environment"
        );
    }
}

#[test]
fn the_config_map_is_mounted_where_the_image_reads_its_config() {
    let example = Example::load();
    // sidecar_config_text follows image path -> mount -> volume -> ConfigMap -> key and
    // panics at the first broken link.
    let text = example.sidecar_config_text();
    assert!(text.contains("listen:"), "{text}");
    assert_eq!(example.sidecar_config_path(), image_config_path());
    // The image the kustomization rewrites is the one the Deployment uses.
    let kustomization = example.of_kind("Kustomization")[0];
    let image = str_at(&example.sidecar()["image"], "image");
    let repository = image.split(':').next().unwrap();
    let names: Vec<String> = vec_at(&kustomization["images"], "images")
        .iter()
        .map(|i| str_at(&i["name"], "images[].name").to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == repository),
        "{names:?} vs {image}"
    );
}

#[test]
fn the_config_map_config_passes_check_without_secrets() {
    let example = Example::load();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, example.sidecar_config_text()).unwrap();
    let out = sidecar()
        .args(["check", "--skip-secrets", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .starts_with("config OK: listen 127.0.0.1:8080 -> upstream http://127.0.0.1:3000"),
        "{}",
        text(&out)
    );
}

#[test]
fn the_service_monitor_scrapes_the_sidecar_admin_port_through_the_metrics_service() {
    let example = Example::load();
    let monitors = example.of_kind("ServiceMonitor");
    assert_eq!(monitors.len(), 1);
    let monitor = monitors[0];
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    let services: Vec<&Yaml> = example
        .of_kind("Service")
        .into_iter()
        .filter(|s| labels_match(selector, &s["metadata"]["labels"]))
        .collect();
    assert_eq!(
        services.len(),
        1,
        "the ServiceMonitor must select one Service"
    );
    let service = services[0];
    assert!(labels_match(
        &service["spec"]["selector"],
        &example.pod()["metadata"]["labels"]
    ));
    let config = example.sidecar_config();
    let admin_port = port_of(str_at(&config["admin"]["listen"], "admin.listen"));
    for endpoint in vec_at(&monitor["spec"]["endpoints"], "endpoints") {
        assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
        let port_name = str_at(&endpoint["port"], "endpoint port");
        let port = vec_at(&service["spec"]["ports"], "ports")
            .iter()
            .find(|p| p["name"].as_str() == Some(port_name))
            .unwrap_or_else(|| panic!("the Service has no port named {port_name}"));
        let (container, target) = example.resolve_target_port(&port["targetPort"]);
        assert_eq!(
            (container.as_str(), target),
            ("released-sidecar", admin_port)
        );
    }
}

#[test]
fn kustomization_lists_every_manifest_except_the_service_monitor() {
    let example = Example::load();
    let kustomizations = example.of_kind("Kustomization");
    assert_eq!(kustomizations.len(), 1);
    let listed: BTreeSet<String> = strings(&kustomizations[0]["resources"], "resources")
        .into_iter()
        .collect();
    let on_disk: BTreeSet<String> = example
        .docs
        .iter()
        .map(|(file, _)| file.clone())
        .filter(|f| f != "kustomization.yaml" && f != "servicemonitor.yaml")
        .collect();
    assert!(
        example.docs.iter().any(|(f, _)| f == "servicemonitor.yaml"),
        "servicemonitor.yaml is shipped"
    );
    assert_eq!(
        listed, on_disk,
        "kustomization.yaml resources vs the files in {KUBE_DIR}"
    );
}

/// Kubernetes version the example must validate against: native sidecars
/// (`restartPolicy: Always` on an init container) are on by default from 1.29.
const KUBE_VERSION: &str = "1.29.0";

/// `kubernetes-validate --strict -k KUBE_VERSION` on `files`.
fn kubernetes_validate(bin: &Path, files: &[PathBuf]) -> Output {
    Command::new(bin)
        .args(["--strict", "--no-warn", "-k", KUBE_VERSION])
        .args(files)
        .output()
        .expect("run kubernetes-validate")
}

#[test]
fn kubernetes_manifests_validate_against_the_openapi_schemas_in_strict_mode() {
    let local = support::tools::tools_dir().join("venv/bin/kubernetes-validate");
    let bin = if local.is_file() {
        Some(local)
    } else {
        support::tools::require(
            "kubernetes-validate",
            &["--version"],
            "scripts/gateway-tools.sh installs it into target/tools/venv",
        )
    };
    let Some(bin) = bin else { return };
    // Kustomization and the prometheus-operator ServiceMonitor are not Kubernetes API kinds:
    // the schemas have nothing to check them against (their shape is checked above).
    let files: Vec<PathBuf> = kube_documents()
        .into_iter()
        .filter(|(_, d)| !matches!(d["kind"].as_str(), Some("Kustomization" | "ServiceMonitor")))
        .map(|(file, _)| repo(&format!("{KUBE_DIR}/{file}")))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(files.len() >= 6, "{files:?}");
    let out = kubernetes_validate(&bin, &files);
    assert!(out.status.success(), "{}", text(&out));

    // Strict mode is really on: an unknown field in the Deployment fails.
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("deployment.yaml");
    let deployment = read(&format!("{KUBE_DIR}/deployment.yaml"));
    assert!(deployment.contains("\n  replicas:"), "{deployment}");
    std::fs::write(
        &typo,
        deployment.replace("\n  replicas:", "\n  replicaz: 1\n  replicas:"),
    )
    .unwrap();
    let out = kubernetes_validate(&bin, &[typo]);
    assert!(
        !out.status.success(),
        "a misspelt field passed:\n{}",
        text(&out)
    );
}
