//! `check` and `explain` through the real binary (SPEC §6).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::hostile::{alias_bomb, mkfifo, nested_lists};

const SECRET: &str = "cli-secret-value-123";

fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
    dir
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn sidecar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_released-sidecar"))
        .args(args)
        .env_remove("RELEASED_SIDECAR_CONFIG")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"listen: "127.0.0.1:18080"
upstream: "http://127.0.0.1:3000"
released:
  account_id: "acct-1"
  shared_secret_file: secret
identity:
  user_id:    { header: X-Forwarded-User, transform: [escape] }
  user_email: { header: X-Forwarded-Email }
  name:       { header: X-Forwarded-Preferred-Username }
  avatar_url: { header: X-Forwarded-Avatar }
routes:
  - name: portal
    match: { host: "app.example.com", path: "^/(feedback|roadmap)" }
"#;

#[test]
fn check_prints_one_summary_line_and_exits_zero_on_a_good_config() {
    let dir = workdir();
    let config = write(dir.path(), GOOD);
    let out = sidecar(&["check", "--config", config.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(
        stdout.starts_with("config OK: listen 127.0.0.1:18080 -> upstream http://127.0.0.1:3000"),
        "{stdout}"
    );
    assert!(stdout.contains("1 route (portal)"), "{stdout}");
    assert!(!stdout.contains(SECRET));
}

#[test]
fn check_lists_every_error_with_path_and_line_and_exits_one() {
    let dir = workdir();
    let bad = GOOD
        .replace(
            "transform: [escape]",
            "transform: [escape], pattern: \"([\"",
        )
        .replace("acct-1\"", "acct-1\"\n  timeout: soon")
        .replace(
            "path: \"^/(feedback|roadmap)\"",
            "path: \"^/(feedback|roadmap)\", hots: x",
        );
    let config = write(
        dir.path(),
        &format!("{bad}trusted_proxies: [\"not-a-cidr\"]\n"),
    );
    let out = sidecar(&["check", "--config", config.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.is_empty());
    let path = config.display().to_string();
    for expected in [
        format!("{path}: 4 errors"),
        format!("{path}:5: released.timeout: invalid duration `soon`"),
        format!("{path}:8: identity.user_id.pattern: invalid regex"),
        format!("{path}:14: routes[0].match.hots: unknown key (did you mean `host`?)"),
        format!("{path}:15: trusted_proxies[0]: `not-a-cidr` is not an IP address or CIDR range"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn check_reports_a_missing_secret_unless_secrets_are_skipped() {
    let dir = workdir();
    let config = write(
        dir.path(),
        &GOOD.replace(
            "shared_secret_file: secret",
            "shared_secret_file: /nonexistent/shared-secret",
        ),
    );
    let out = sidecar(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains(
        "released.shared_secret_file: cannot read secret file /nonexistent/shared-secret"
    ));
    let out = sidecar(&[
        "check",
        "--skip-secrets",
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
}

#[test]
fn config_path_comes_from_the_environment_or_defaults_to_etc() {
    let dir = workdir();
    let config = write(dir.path(), GOOD);
    let out = Command::new(env!("CARGO_BIN_EXE_released-sidecar"))
        .arg("check")
        .env("RELEASED_SIDECAR_CONFIG", &config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let out = sidecar(&["check"]);
    if !Path::new("/etc/released-sidecar/config.yaml").exists() {
        assert_eq!(out.status.code(), Some(1));
        assert!(
            text(&out).1.contains("/etc/released-sidecar/config.yaml"),
            "{}",
            text(&out).1
        );
    }
}

/// What a `check` run did, with its peak resident memory.
struct Bounded {
    /// The exit code; `None` when killed by a signal or by the deadline.
    code: Option<i32>,
    stderr: String,
    /// Peak resident set of the process (`ru_maxrss` from `wait4`), in KiB.
    max_rss_kib: i64,
    timed_out: bool,
}

/// Most memory `check` may take on any file under the config size bound.
const CHECK_MEMORY_KIB: i64 = 64 * 1024;

/// Runs `check --config PATH` and reads the peak RSS of exactly that process with
/// `wait4(2)`. The child may map at most 2 GiB and is killed after 60 s: old code fed a
/// hostile file then fails the test instead of taking the machine with it.
fn check_bounded(config: &Path) -> Bounded {
    use std::os::unix::process::CommandExt;
    let out_dir = tempfile::tempdir().unwrap();
    let stderr_path = out_dir.path().join("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_released-sidecar"));
    cmd.arg("check")
        .arg("--config")
        .arg(config)
        .env_remove("RELEASED_SIDECAR_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    // SAFETY: setrlimit(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 2 << 30,
                rlim_max: 2 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Reaped by wait4 below, which is what reports the child's own peak memory.
    #[allow(clippy::zombie_processes)]
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut status = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: wait4 on our own child's pid, writing into locals that outlive the call.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(rc >= 0, "wait4: {}", std::io::Error::last_os_error());
        if rc == pid {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            // SAFETY: kill(2) and wait4(2) on our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Bounded {
        code: (!timed_out && libc::WIFEXITED(status)).then(|| libc::WEXITSTATUS(status)),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
        max_rss_kib: usage.ru_maxrss,
        timed_out,
    }
}

#[test]
fn check_refuses_hostile_yaml_with_path_and_line_in_bounded_memory() {
    let dir = workdir();
    let cases: Vec<(&str, String, String)> = vec![
        (
            "the 540-byte billion laughs",
            alias_bomb(10, 10, 540),
            ":6: e[7]: the document holds more than 100000 values once its aliases are expanded"
                .into(),
        ),
        (
            "the 384-byte variant",
            alias_bomb(7, 12, 384),
            ":6: e[3]: the document holds more than 100000 values once its aliases are expanded"
                .into(),
        ),
        (
            "5,000 nested lists (10 KB)",
            nested_lists(5_000),
            format!(
                ":1: {}: lists and mappings are nested more than 64 levels deep",
                "[0]".repeat(64)
            ),
        ),
        (
            "20,000 nested lists",
            nested_lists(20_000),
            format!(
                ":1: {}: lists and mappings are nested more than 64 levels deep",
                "[0]".repeat(64)
            ),
        ),
        (
            "nesting inside a route",
            format!("{GOOD}  - name:\n      {}x\n", "- ".repeat(5_000)),
            format!(
                ":15: routes[1].name{}: lists and mappings are nested",
                "[0]".repeat(61)
            ),
        ),
        (
            "14,000 routes with a path regex each",
            format!(
                "{GOOD}{}",
                (0..14_000)
                    .map(|i| format!("  - name: r{i}\n    match: {{ path: \"^/a\" }}\n"))
                    .collect::<String>()
            ),
            // Where the budget runs out depends on the regex engine's sizes.
            "….match.path: the regexes of this config would take more than 8 MiB compiled".into(),
        ),
        (
            "a file past 1 MiB",
            format!("{GOOD}{}", format!("# {}\n", "x".repeat(1021)).repeat(1025)),
            ": cannot read the config file: it is larger than 1 MiB".into(),
        ),
    ];
    for (what, text, want) in cases {
        let config = write(dir.path(), &text);
        let run = check_bounded(&config);
        eprintln!("{what}: check peaked at {} KiB", run.max_rss_kib);
        let path = config.display().to_string();
        assert!(!run.timed_out, "{what}: check did not finish in 60 s");
        assert_eq!(run.code, Some(1), "{what}:\n{}", run.stderr);
        let want = match want.strip_prefix('…') {
            Some(anywhere) => anywhere.to_string(),
            None => format!("{path}{want}"),
        };
        assert!(
            run.stderr.contains(&want),
            "{what}: missing {want:?} in:\n{}",
            run.stderr
        );
        assert!(
            run.max_rss_kib < CHECK_MEMORY_KIB,
            "{what}: check peaked at {} KiB",
            run.max_rss_kib
        );
    }
}

#[test]
fn check_of_the_largest_valid_config_stays_in_bounded_memory() {
    let dir = workdir();
    // As many routes as the node bound lets through.
    let routes: String = (0..14_000)
        .map(|i| format!("  - name: r{i}\n    match: {{ host: \"h{i}.example.com\" }}\n"))
        .collect();
    let text = format!("{GOOD}{routes}");
    assert!(text.len() < 1024 * 1024);
    let run = check_bounded(&write(dir.path(), &text));
    eprintln!("14,000 routes: check peaked at {} KiB", run.max_rss_kib);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        run.max_rss_kib < CHECK_MEMORY_KIB,
        "{} KiB",
        run.max_rss_kib
    );
}

#[test]
fn check_refuses_secrets_that_are_not_small_regular_files_without_blocking() {
    let dir = workdir();
    mkfifo(&dir.path().join("fifo"));
    std::fs::create_dir(dir.path().join("folder")).unwrap();
    let cases = [
        ("/dev/zero", "it is a character device, not a regular file"),
        ("fifo", "it is a FIFO (named pipe), not a regular file"),
        ("folder", "it is a directory, not a regular file"),
    ];
    for (secret, want) in cases {
        let config = write(
            dir.path(),
            &GOOD.replace(
                "shared_secret_file: secret",
                &format!("shared_secret_file: {secret}"),
            ),
        );
        let run = check_bounded(&config);
        assert!(!run.timed_out, "{secret}: check blocked for 60 s");
        assert_eq!(run.code, Some(1), "{secret}:\n{}", run.stderr);
        assert!(
            run.stderr
                .contains(":5: released.shared_secret_file: cannot read secret file")
                && run.stderr.contains(want),
            "{secret}: missing {want:?} in:\n{}",
            run.stderr
        );
        assert!(
            run.max_rss_kib < CHECK_MEMORY_KIB,
            "{secret}: {} KiB",
            run.max_rss_kib
        );
    }
    // The config file itself, too.
    let run = check_bounded(&dir.path().join("fifo"));
    assert!(!run.timed_out, "a FIFO as config blocked check");
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("cannot read the config file: it is a FIFO"),
        "{}",
        run.stderr
    );
}

fn explain(config: &Path, extra: &[&str]) -> String {
    let mut args = vec!["explain", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = sidecar(&args);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stdout.contains(SECRET), "secret leaked:\n{stdout}");
    stdout
}

#[test]
fn explain_shows_the_token_request_that_would_be_sent() {
    let dir = workdir();
    let config = write(dir.path(), GOOD);
    let out = explain(
        &config,
        &[
            "--url",
            "https://app.example.com/feedback?x=1",
            "-H",
            "Accept: text/html",
            "-H",
            "X-Forwarded-User: alice@example.com",
            "-H",
            "X-Forwarded-Email: alice@example.com",
            "-H",
            "X-Forwarded-Preferred-Username: Alice",
            "-H",
            "X-Forwarded-Avatar: not a url",
            "-H",
            "X_Forwarded_User: mallory",
        ],
    );
    for line in [
        "route:      portal (host app.example.com, path ~ ^/(feedback|roadmap))",
        "trusted:    yes",
        "stripped:   x_forwarded_user (respelled) (never reach the app)",
        "page load:  yes",
        "user_id    <- header x-forwarded-user, transform [escape]",
        "dropped:    avatar_url: value is not an absolute http(s) URL",
        "POST https://accounts.releasedhub.com/auth/api/impersonation/token",
        "Authorization: Bearer [redacted]",
        r#"{"account_id":"acct-1","user_id":"alice:40example:2ecom","user_email":"alice@example.com","profile":{"name":"Alice"}}"#,
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn explain_says_exactly_why_no_token_would_be_requested() {
    let dir = workdir();
    let config = write(dir.path(), GOOD);
    let user = [
        "-H",
        "X-Forwarded-User: alice",
        "-H",
        "X-Forwarded-Email: alice@example.com",
    ];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--url", "https://other.example.com/feedback"],
            "token:      none: no route matches",
        ),
        (
            vec![
                "--url",
                "https://app.example.com/feedback",
                "-H",
                "Accept: application/json",
            ],
            "token:      none: not a page load: neither Accept contains text/html",
        ),
        (
            vec![
                "--url",
                "https://app.example.com/feedback",
                "-X",
                "POST",
                "-H",
                "Accept: text/html",
            ],
            "token:      none: not a page load: method is POST",
        ),
        (
            vec![
                "--url",
                "https://app.example.com/feedback",
                "--peer",
                "203.0.113.9",
            ],
            "token:      none: the TCP peer is not in trusted_proxies",
        ),
        (
            vec![
                "--url",
                "https://app.example.com/roadmap",
                "-H",
                "X-Forwarded-User: a",
                "-H",
                "X-Forwarded-User: b",
            ],
            "token:      none: no valid identity: user_id: header x-forwarded-user appears 2 times",
        ),
    ];
    for (mut args, want) in cases {
        if !args.iter().any(|a| a.starts_with("X-Forwarded-User")) {
            args.extend_from_slice(&user);
        }
        let out = explain(&config, &args);
        assert!(out.contains(want), "{args:?}: missing {want:?} in:\n{out}");
    }
}

#[test]
fn explain_shows_the_field_verdicts_the_proxy_applies() {
    let dir = workdir();
    let config = write(dir.path(), GOOD);
    let request = |email: &str, avatar: &str| {
        explain(
            &config,
            &[
                "--url",
                "https://app.example.com/feedback",
                "-H",
                "X-Forwarded-User: alice",
                "-H",
                &format!("X-Forwarded-Email: {email}"),
                "-H",
                &format!("X-Forwarded-Avatar: {avatar}"),
            ],
        )
    };
    let dropped = "dropped:    avatar_url: value is not an absolute http(s) URL";
    for avatar in [
        r#"https://cdn.example/a.png"><img src=x onerror=alert(1)>"#,
        r"https:\\cdn.example\a.png",
        "https://cdn.example/a b.png",
    ] {
        let out = request("alice@example.com", avatar);
        assert!(
            out.contains(dropped),
            "{avatar}: missing {dropped:?} in:\n{out}"
        );
        assert!(
            out.contains(r#""user_email":"alice@example.com"}"#),
            "{avatar}: the call is still made:\n{out}"
        );
    }
    let out = request("alice@example.com", "HTTPS://CDN.Example/a/../a.png");
    assert!(
        out.contains(r#""profile":{"avatar_url":"https://cdn.example/a.png"}"#),
        "the canonical form is sent:\n{out}"
    );
    for email in [
        "a..b@example.com",
        ".alice@example.com",
        "alice.@example.com",
    ] {
        let out = request(email, "https://cdn.example/a.png");
        assert!(
            out.contains("token:      none: no valid identity: user_email: value is not an email address Released accepts"),
            "{email}:\n{out}"
        );
    }
}
