//! External programs some tests drive (oauth2-proxy, node, nginx, Chromium, promtool,
//! systemd-analyze, kubernetes-validate): where they are found, what a test does when one is
//! missing, and child processes that cannot outlive the test binary.
//!
//! A missing tool is a visible `SKIP` line on the terminal (libtest captures `eprintln!`
//! of passing tests, so the line is written to stderr directly) and, under CI (`CI` set to
//! anything but `false`/`0`), a failure: CI must never report a check as passed that did
//! not run. `scripts/deps.sh test` and `scripts/gateway-tools.sh` install every tool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

/// Where `scripts/gateway-tools.sh` puts what it builds: `target/tools` in the repository
/// (`bin/oauth2-proxy`, `venv/bin/kubernetes-validate`), whatever `CARGO_TARGET_DIR` says.
pub fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tools")
}

/// Whether this run is CI's, where a missing tool fails instead of skipping.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Reports that the current test could not run its check: a `SKIP` line on the terminal,
/// or a panic under CI. `install` says how to get the tool.
pub fn skip(what: &str, install: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    if in_ci() {
        panic!("{test}: {what}; under CI this is a failure, not a skip ({install})");
    }
    let line = format!("SKIP {test}: {what} ({install})\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `name` from `target/tools/bin`, else from `PATH`.
pub fn find(name: &str) -> Option<PathBuf> {
    let local = tools_dir().join("bin").join(name);
    if local.is_file() {
        return Some(local);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `tool` if it runs (`tool args` exits 0); otherwise a [`skip`] and `None`.
pub fn require(tool: &str, args: &[&str], install: &str) -> Option<PathBuf> {
    let found = find(tool).unwrap_or_else(|| PathBuf::from(tool));
    match Command::new(&found)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => Some(found),
        _ => {
            skip(&format!("`{tool}` is not installed"), install);
            None
        }
    }
}

/// PIDs of children still running, killed when the test binary exits.
static LIVE: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Directories of `static` fixtures, removed when the binary exits.
static LEFT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Kills the children still running, then removes the fixtures' directories (the
/// children first, so none writes into a directory being removed).
extern "C" fn clean_up_at_exit() {
    let pids = LIVE.lock().map(|l| l.clone()).unwrap_or_default();
    for pid in pids {
        // SAFETY: kill(2) on a pid we spawned; no memory is touched.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let dirs = LEFT.lock().map(|l| l.clone()).unwrap_or_default();
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Registers [`clean_up_at_exit`] once.
fn at_exit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: registers a plain extern "C" function; libtest leaves main through exit(3),
    // which runs it.
    ONCE.call_once(|| unsafe {
        libc::atexit(clean_up_at_exit);
    });
}

/// Kills `pid` (a child this test binary started) when the binary exits, for processes
/// kept in a `static` that is never dropped (a topology shared by several tests).
pub fn kill_at_exit(pid: u32) {
    at_exit();
    LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

/// Removes `dir` when the binary exits: a `static` fixture's `TempDir` is never dropped.
pub fn remove_at_exit(dir: &Path) {
    at_exit();
    LEFT.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_path_buf());
}

/// Stops tracking `pid` once it has been waited for (its number may be reused).
fn reaped(pid: u32) {
    if let Ok(mut live) = LIVE.lock() {
        live.retain(|p| *p != pid);
    }
}

/// A child process with its output in a log file; killed (by PID) when dropped or when
/// the test binary exits.
pub struct Process {
    /// What it is, for messages.
    pub name: String,
    child: Child,
    /// stdout and stderr together.
    pub log_path: PathBuf,
}

impl Process {
    /// Starts `cmd` with stdin closed and output appended to `log_path`.
    pub fn spawn(name: &str, mut cmd: Command, log_path: &Path) -> Process {
        let log = std::fs::File::create(log_path).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        kill_at_exit(child.id());
        Process {
            name: name.to_string(),
            child,
            log_path: log_path.to_path_buf(),
        }
    }

    /// Everything it wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Panics with its logs if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}:\n{}", self.name, self.logs());
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        reaped(self.child.id());
    }
}

/// Writes `line` to the terminal even when the test passes (libtest shows captured output
/// only for failures): for figures a test reports, such as a measured latency.
pub fn note(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Runs `cmd` to completion, killing it (by PID) after `limit`; its output and status.
pub fn run_bounded(mut cmd: Command, limit: std::time::Duration) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    kill_at_exit(child.id());
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut buf);
        buf
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    reaped(child.id());
    std::process::Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Headless Chromium for a browser test: `$CHROMIUM`, else `chromium` on PATH, with node
/// and the npm packages of tests/gateway; `None` after a [`skip`].
pub fn browser() -> Option<PathBuf> {
    let chromium = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .or_else(|| find("chromium"));
    let Some(chromium) = chromium else {
        skip("`chromium` is not installed", "scripts/deps.sh test");
        return None;
    };
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway/node_modules");
    if find("node").is_none() || !modules.join("playwright-core").is_dir() {
        skip(
            "node or playwright-core is missing",
            "scripts/gateway-tools.sh",
        );
        return None;
    }
    Some(chromium)
}

/// Runs the browser script `script` (in tests/gateway) with `args` on `chromium`, at most
/// two minutes, and returns the JSON report it prints last.
pub fn run_browser(chromium: &Path, script: &str, args: &[&str]) -> serde_json::Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway");
    let mut cmd = Command::new("node");
    cmd.arg(dir.join(script))
        .args(args)
        .current_dir(&dir)
        .env("CHROMIUM", chromium);
    let out = run_bounded(cmd, std::time::Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(
        stdout
            .lines()
            .last()
            .expect("the browser script prints a report"),
    )
    .expect("the report is JSON")
}
