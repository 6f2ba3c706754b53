//! The README's demo command works end to end: a real token from the stand-in lands in
//! the sample page's tags; it suggests commands only while something still answers them,
//! and leaves no temporary files (its secret) behind, however it is stopped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The demos take turns: each prefers ports 8080 and 9901, and two starting at once would
/// both find them free.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The demo with its temporary files under `tmp`.
fn demo_command(tmp: &Path) -> Command {
    let mut cmd = Command::new(demo_binary());
    cmd.env(
        "RELEASED_SIDECAR_BIN",
        env!("CARGO_BIN_EXE_released-sidecar"),
    )
    .env("TMPDIR", tmp);
    cmd
}

/// What is left in `dir`.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

fn demo_binary() -> PathBuf {
    // `cargo test` builds examples next to the binaries: target/<profile>/examples/demo.
    let sidecar = PathBuf::from(env!("CARGO_BIN_EXE_released-sidecar"));
    sidecar.parent().unwrap().join("examples").join("demo")
}

#[test]
fn the_demo_injects_a_token_into_the_sample_page() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let demo = demo_binary();
    assert!(
        demo.exists(),
        "{} not built (cargo test builds examples)",
        demo.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = demo_command(tmp.path()).arg("--once").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("LOCAL STAND-IN token API"), "{stdout}");
    assert!(
        stdout.contains("<released-page account=\"demo\" auth-token=\"tok-1-"),
        "{stdout}"
    );
    assert!(
        stdout.contains("<released-widget kind=\"roadmap\" auth-token=\"tok-1-"),
        "{stdout}"
    );
    assert!(
        stdout.contains("The stand-in received 1 token request(s)."),
        "{stdout}"
    );
    // Everything was stopped: no curl suggestions for a dead sidecar, no files left.
    assert!(!stdout.contains("curl -s"), "{stdout}");
    assert!(
        stdout.contains("without --once keeps everything running"),
        "{stdout}"
    );
    assert_eq!(leftovers(tmp.path()), Vec::<PathBuf>::new());
}

#[test]
fn the_interactive_demo_cleans_up_on_sigterm() {
    let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Demo(
        demo_command(tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let child = &mut demo.0;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("Press Ctrl+C to stop."))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the demo never got ready:\n{}", seen.join("\n")),
        }
    }
    let text = seen.join("\n");
    assert!(text.contains("curl -s http://127.0.0.1:"), "{text}");
    // The explain hint names the binary the demo runs, wherever the target dir is.
    let binary = env!("CARGO_BIN_EXE_released-sidecar");
    assert!(
        text.contains(&format!("  {binary} explain --config ")),
        "{text}"
    );
    assert!(
        !leftovers(tmp.path()).is_empty(),
        "the demo keeps its files while running"
    );

    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            panic!("the demo did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // It says that it stopped and what it removed, rather than going quiet.
    let after: Vec<String> = rx.try_iter().collect();
    assert!(
        after.iter().any(|l| l.starts_with("Stopped; removed ")),
        "{after:?}"
    );
    assert_eq!(leftovers(tmp.path()), Vec::<PathBuf>::new());
}

/// The interactive demo, stopped (SIGTERM, so it stops its sidecar too) if a check fails
/// before the test stops it itself.
struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}
