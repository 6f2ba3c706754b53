//! `check` and `explain` through the real binary (SPEC §6).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
