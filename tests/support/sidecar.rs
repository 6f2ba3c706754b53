//! The real `released-sidecar` binary, started on free loopback ports with a config
//! written to a temporary directory, its stderr captured to a file. Stopped (SIGKILL, by
//! PID) when dropped if the test did not stop it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// The shared secret tests configure unless they choose another.
pub const SECRET: &str = "test-shared-secret-9f8e7d";

/// A standard config with placeholders: `{listen}`, `{admin}`, `{upstream}`, `{api}`,
/// `{secret_file}`, `{dir}`.
pub const DEFAULT_CONFIG: &str = r#"listen: "{listen}"
admin: { listen: "{admin}" }
upstream: "{upstream}"
workers: 1
released:
  api_url: "{api}"
  account_id: "acct-test"
  shared_secret_file: "{secret_file}"
  timeout: "1500ms"
identity:
  user_id: { header: X-Forwarded-User, transform: [escape] }
  user_email: { header: X-Forwarded-Email }
  name: { header: X-Forwarded-Preferred-Username }
  avatar_url: { header: X-Forwarded-Avatar }
"#;

/// A step run on the sidecar's directory before it starts.
type Prepare = Box<dyn Fn(&std::path::Path)>;

/// Builds a sidecar start.
pub struct SidecarBuilder {
    template: String,
    upstream: String,
    api: String,
    secret: String,
    extra: String,
    env: Vec<(String, String)>,
    files: Vec<(String, String)>,
    args: Vec<String>,
    prepare: Option<Prepare>,
    ready_path: &'static str,
    max_open_files: Option<u64>,
}

impl SidecarBuilder {
    /// A sidecar in front of `upstream` using the stand-in at `api`.
    pub fn new(upstream: &str, api: &str) -> Self {
        Self {
            template: DEFAULT_CONFIG.to_string(),
            upstream: upstream.to_string(),
            api: api.to_string(),
            secret: SECRET.to_string(),
            extra: String::new(),
            env: Vec::new(),
            files: Vec::new(),
            args: Vec::new(),
            prepare: None,
            ready_path: "/readyz",
            max_open_files: None,
        }
    }

    /// Replaces the whole config template (placeholders still apply).
    pub fn template(mut self, template: &str) -> Self {
        self.template = template.to_string();
        self
    }

    /// Runs `n` proxy workers (the template's `workers: 1` otherwise).
    pub fn workers(mut self, n: usize) -> Self {
        assert!(
            self.template.contains("workers: 1\n"),
            "the template sets workers"
        );
        self.template = self
            .template
            .replace("workers: 1\n", &format!("workers: {n}\n"));
        self
    }

    /// Starts the process with `RLIMIT_NOFILE` lowered to `n` (to reach the limit cheaply).
    pub fn max_open_files(mut self, n: u64) -> Self {
        self.max_open_files = Some(n);
        self
    }

    /// Appends top-level YAML to the template.
    pub fn extra(mut self, yaml: &str) -> Self {
        self.extra.push_str(yaml);
        if !yaml.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// The content of the secret file.
    pub fn secret(mut self, secret: &str) -> Self {
        self.secret = secret.to_string();
        self
    }

    /// A file written into the sidecar's directory (`{dir}/name`) before it starts.
    pub fn file(mut self, name: &str, content: &str) -> Self {
        self.files.push((name.to_string(), content.to_string()));
        self
    }

    /// Runs `f` on the sidecar's directory before it starts (symlink layouts…).
    pub fn prepare(mut self, f: impl Fn(&std::path::Path) + 'static) -> Self {
        self.prepare = Some(Box::new(f));
        self
    }

    /// Returns once `/healthz` answers instead of `/readyz` (to watch readiness itself);
    /// the proxy port accepts by then all the same.
    pub fn without_waiting_for_ready(mut self) -> Self {
        self.ready_path = "/healthz";
        self
    }

    /// An extra argument after `run --config PATH`.
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    /// An environment variable for the process (`RUST_LOG`, …).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the binary and waits until `/readyz` answers 200 and the proxy port accepts.
    pub async fn start(self) -> Sidecar {
        let mut last_logs = String::new();
        for _attempt in 0..3 {
            match self.try_start().await {
                Ok(s) => return s,
                Err(logs) if logs.contains("cannot listen") => last_logs = logs,
                Err(logs) => panic!("sidecar did not start:\n{logs}"),
            }
        }
        panic!("sidecar could not find free ports:\n{last_logs}");
    }

    /// Starts the binary expecting it to refuse to start; returns what it logged.
    pub async fn start_err(self) -> String {
        match self.try_start().await {
            Ok(sidecar) => panic!("the sidecar started:\n{}", sidecar.logs()),
            Err(logs) => logs,
        }
    }

    async fn try_start(&self) -> Result<Sidecar, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        // Two probes can return the same free port; the config refuses admin == listen.
        let admin_port = std::iter::repeat_with(free_port)
            .find(|p| *p != listen.port())
            .unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let secret_file = dir.path().join("shared-secret");
        std::fs::write(&secret_file, format!("{}\n", self.secret)).unwrap();
        for (name, content) in &self.files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        if let Some(prepare) = &self.prepare {
            prepare(dir.path());
        }
        let mut sidecar = Sidecar {
            child: None,
            listen,
            admin,
            vars: vec![
                ("{listen}".into(), listen.to_string()),
                ("{admin}".into(), admin.to_string()),
                ("{upstream}".into(), self.upstream.clone()),
                ("{api}".into(), self.api.clone()),
                ("{secret_file}".into(), secret_file.display().to_string()),
                ("{dir}".into(), dir.path().display().to_string()),
            ],
            log_path: dir.path().join("stderr.log"),
            config_path: dir.path().join("config.yaml"),
            secret_path: secret_file,
            dir,
        };
        sidecar.write_config(&format!("{}{}", self.template, self.extra));
        let log = std::fs::File::create(&sidecar.log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_released-sidecar"));
        cmd.arg("run")
            .arg("--config")
            .arg(&sidecar.config_path)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env_remove("RELEASED_SIDECAR_CONFIG")
            .env("RUST_LOG", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(n) = self.max_open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit(2) is async-signal-safe and touches no memory of the parent.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        sidecar.child = Some(cmd.spawn().expect("spawn released-sidecar"));
        let ready_url = sidecar.admin_url(self.ready_path);
        let child = sidecar.child.as_mut().unwrap();
        match wait_until_serving(child, &ready_url, listen).await {
            Ok(()) => Ok(sidecar),
            Err(Some(status)) => Err(format!("exited with {status}:\n{}", sidecar.logs())),
            Err(None) => Err(format!("not ready after 20s:\n{}", sidecar.logs())),
        }
    }
}

/// Waits until the process `child` serves: `ready_url` on its admin port answers 200, and
/// its proxy port `listen` accepts a connection. The admin answer alone does not prove the
/// proxy port is bound: the admin port is bound with SO_REUSEPORT (for the binary
/// upgrade), so while the process starts, a port picked by another test's sidecar at the
/// same moment can answer for it. `Err(Some(status))`: it exited; `Err(None)`: 20 s passed.
pub async fn wait_until_serving(
    child: &mut Child,
    ready_url: &str,
    listen: SocketAddr,
) -> Result<(), Option<ExitStatus>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(Some(status));
        }
        let ready = match super::client().get(ready_url).send().await {
            Ok(resp) => resp.status() == 200,
            Err(_) => false,
        };
        if ready && tokio::net::TcpStream::connect(listen).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(None)
}

/// A running sidecar process.
pub struct Sidecar {
    child: Option<Child>,
    /// Proxy address.
    pub listen: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    vars: Vec<(String, String)>,
    /// Captured stderr.
    pub log_path: PathBuf,
    /// The config file the process watches.
    pub config_path: PathBuf,
    /// The secret file the default config names.
    pub secret_path: PathBuf,
    /// The temporary directory holding all of it.
    pub dir: tempfile::TempDir,
}

impl Sidecar {
    /// `http://LISTEN{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// A zero-downtime binary upgrade: starts a `run --upgrade` successor on the same
    /// config, sends SIGQUIT to the running process once the successor waits on
    /// `upgrade_sock`, and from then on stands for the successor. Returns the old process's
    /// exit status.
    pub async fn upgrade(&mut self, upgrade_sock: &std::path::Path) -> ExitStatus {
        self.upgrade_with(upgrade_sock, |_| ()).await
    }

    /// [`Self::upgrade`], running `meanwhile` once the successor waits on `upgrade_sock`
    /// and before the running process is told to hand over.
    pub async fn upgrade_with(
        &mut self,
        upgrade_sock: &std::path::Path,
        meanwhile: impl FnOnce(&std::path::Path),
    ) -> ExitStatus {
        let generation = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let log_path = self.dir.path().join(format!("stderr-{generation}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let successor = Command::new(env!("CARGO_BIN_EXE_released-sidecar"))
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--upgrade")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .env_remove("RELEASED_SIDECAR_CONFIG")
            .env("RUST_LOG", "info")
            .spawn()
            .expect("spawn the successor");
        let waiting =
            super::eventually(Duration::from_secs(10), || async { upgrade_sock.exists() }).await;
        assert!(
            waiting,
            "the successor never listened on {}",
            upgrade_sock.display()
        );
        meanwhile(upgrade_sock);
        self.signal(libc::SIGQUIT);
        let old = self.wait_exit(Duration::from_secs(30)).await;
        let old = old.unwrap_or_else(|| panic!("the old process did not exit:\n{}", self.logs()));
        self.child = Some(successor);
        self.log_path = log_path;
        old
    }

    /// A page load of `path` by alice, as oauth2-proxy would forward it.
    pub async fn page_load(&self, path: &str) -> reqwest::Response {
        super::client()
            .get(self.url(path))
            .headers(super::navigation("alice@example.com", "alice@example.com"))
            .send()
            .await
            .expect("page load")
    }

    /// The body of a GET of `path` with `headers`.
    pub async fn get_text(&self, path: &str, headers: reqwest::header::HeaderMap) -> String {
        super::client()
            .get(self.url(path))
            .headers(headers)
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    }

    /// `http://ADMIN{path}`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// A memory figure of the process from `/proc/PID/status`, in KiB (`VmRSS`: resident
    /// now, `VmHWM`: peak resident).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// CPU seconds (user + system) the process has used.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
    }

    /// File descriptors the process holds open.
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, |d| d.count())
    }

    /// Sends a signal (`libc::SIGTERM`, `libc::SIGHUP`, …) to the process.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        assert!(pid > 0);
        // SAFETY: kill(2) with our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut()?.try_wait().ok()? {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Everything the process wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (up to 5 s) until stderr contains `needle`; the sidecar writes log lines from
    /// a background thread.
    pub async fn wait_for_log(&self, needle: &str) -> bool {
        super::eventually(Duration::from_secs(5), || async {
            self.logs().contains(needle)
        })
        .await
    }

    /// Waits (up to 5 s) until the sample `series` of `/metrics` satisfies `want`.
    pub async fn wait_for_metric(&self, series: &str, want: impl Fn(f64) -> bool) -> bool {
        super::eventually(Duration::from_secs(5), || async {
            want(self.metric(series).await)
        })
        .await
    }

    /// Everything logged so far, once the sidecar's log buffer has surely been written.
    pub async fn settled_logs(&self) -> String {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.logs()
    }

    /// Writes a new config (placeholders applied), replacing the file in place.
    pub fn write_config(&self, template: &str) {
        let mut text = template.to_string();
        for (k, v) in &self.vars {
            text = text.replace(k, v);
        }
        std::fs::write(&self.config_path, text).unwrap();
    }

    /// The current config text.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap()
    }

    /// `/metrics` text.
    pub async fn metrics(&self) -> String {
        super::client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap()
    }

    /// The value of one sample line of `/metrics` (e.g.
    /// `released_sidecar_token_requests_total{result="success"}`), 0 if absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("---- released-sidecar stderr ----\n{}", self.logs());
        }
    }
}
