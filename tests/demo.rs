//! The README's demo command works end to end: a real token from the stand-in lands in
//! the sample page's tags.

use std::path::PathBuf;
use std::process::Command;

fn demo_binary() -> PathBuf {
    // `cargo test` builds examples next to the binaries: target/<profile>/examples/demo.
    let sidecar = PathBuf::from(env!("CARGO_BIN_EXE_released-sidecar"));
    sidecar.parent().unwrap().join("examples").join("demo")
}

#[test]
fn the_demo_injects_a_token_into_the_sample_page() {
    let demo = demo_binary();
    assert!(
        demo.exists(),
        "{} not built (cargo test builds examples)",
        demo.display()
    );
    let out = Command::new(&demo)
        .arg("--once")
        .env(
            "RELEASED_SIDECAR_BIN",
            env!("CARGO_BIN_EXE_released-sidecar"),
        )
        .output()
        .unwrap();
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
}
