//! Hot reload (SPEC §5): config and secret changes take effect without a restart or a
//! failed request; a bad change keeps the old config serving.

mod support;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::hostile::{alias_bomb, mkfifo, nested_lists};
use support::sidecar::{Sidecar, DEFAULT_CONFIG};
use support::{
    client, eventually, navigation, tokens_in, Reply, SidecarBuilder, StandIn, Upstream,
};

const OLD_SECRET: &str = "old-secret-aaaa";
const NEW_SECRET: &str = "new-secret-bbbb";
const PAGE: &str = "<released-page></released-page>";

async fn page_has_token(sidecar: &Sidecar, path: &str) -> bool {
    let resp = sidecar.page_load(path).await;
    assert_eq!(resp.status(), 200);
    tokens_in(&resp.text().await.unwrap()).len() == 1
}

/// A Kubernetes secret volume: `shared-secret -> ..data/shared-secret`,
/// `..data -> ..<timestamp>`.
fn kubernetes_volume(dir: &Path, secret: &str) {
    let volume = dir.join("secret-volume");
    let stamp = volume.join("..2026_11_28_10_00_00.000000001");
    std::fs::create_dir_all(&stamp).unwrap();
    std::fs::write(stamp.join("shared-secret"), secret).unwrap();
    symlink("..2026_11_28_10_00_00.000000001", volume.join("..data")).unwrap();
    symlink("..data/shared-secret", volume.join("shared-secret")).unwrap();
}

/// What the kubelet does on an update: a new timestamped directory, an atomic swap of
/// the `..data` symlink, then the old directory is removed.
fn kubernetes_rotate(dir: &Path, secret: &str, generation: u32) {
    let volume = dir.join("secret-volume");
    let name = format!("..2026_11_28_10_00_{generation:02}.000000002");
    std::fs::create_dir_all(volume.join(&name)).unwrap();
    std::fs::write(volume.join(&name).join("shared-secret"), secret).unwrap();
    let old = std::fs::read_link(volume.join("..data")).unwrap();
    symlink(&name, volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    std::fs::remove_dir_all(volume.join(old)).unwrap();
}

fn kubernetes_config() -> String {
    DEFAULT_CONFIG.replace("{secret_file}", "{dir}/secret-volume/shared-secret")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_rotated_the_kubernetes_way_is_used_for_the_next_page_loads() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(OLD_SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .template(&kubernetes_config())
        .prepare(|dir| kubernetes_volume(dir, OLD_SECRET))
        .start()
        .await;
    assert!(page_has_token(&sidecar, "/").await);

    standin.set_secret(NEW_SECRET);
    kubernetes_rotate(sidecar.dir.path(), NEW_SECRET, 1);
    let rotated = eventually(Duration::from_secs(5), || async {
        standin.calls().last().and_then(|c| c.authorization.clone())
            == Some(format!("Bearer {NEW_SECRET}"))
            || page_has_token(&sidecar, "/").await
    })
    .await;
    assert!(
        rotated,
        "new secret not used within 5s:\n{}",
        sidecar.logs()
    );
    assert!(page_has_token(&sidecar, "/").await);
    assert!(
        sidecar.wait_for_log("secret rotated").await,
        "{}",
        sidecar.logs()
    );
    let logs = sidecar.settled_logs().await;
    assert!(!logs.contains(NEW_SECRET) && !logs.contains(OLD_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_config_changes_routes_without_a_restart() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let routes = "routes:\n  - name: feedback\n    match: { path: \"^/feedback\" }\n";
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .extra(routes)
        .start()
        .await;
    assert!(page_has_token(&sidecar, "/feedback").await);
    assert!(
        !page_has_token(&sidecar, "/roadmap").await,
        "no route for /roadmap yet"
    );

    // An editor's save: write a temporary file, then rename it over the config.
    let text = sidecar
        .config_text()
        .replace("^/feedback", "^/(feedback|roadmap)");
    let tmp = sidecar.dir.path().join(".config.yaml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &sidecar.config_path).unwrap();

    assert!(
        eventually(Duration::from_secs(5), || page_has_token(
            &sidecar, "/roadmap"
        ))
        .await,
        "route change not applied:\n{}",
        sidecar.logs()
    );
    assert!(
        sidecar.wait_for_log("route feedback changed").await,
        "{}",
        sidecar.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_keeps_the_previous_one_serving() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;
    let good = sidecar.config_text();

    std::fs::write(&sidecar.config_path, format!("{good}workers: [oops\n")).unwrap();
    assert!(
        sidecar
            .wait_for_metric(
                "released_sidecar_config_reloads_total{result=\"error\"}",
                |v| v >= 1.0
            )
            .await,
        "{}",
        sidecar.logs()
    );
    assert!(
        sidecar
            .wait_for_log("config reload failed; still serving generation 1")
            .await,
        "{}",
        sidecar.logs()
    );
    assert!(
        sidecar.wait_for_log("YAML syntax error").await,
        "{}",
        sidecar.logs()
    );

    std::fs::write(
        &sidecar.config_path,
        good.replace("acct-test", "${NOT_SET_ANYWHERE}"),
    )
    .unwrap();
    assert!(
        sidecar
            .wait_for_metric(
                "released_sidecar_config_reloads_total{result=\"error\"}",
                |v| v >= 2.0
            )
            .await
    );
    assert!(
        sidecar
            .wait_for_log("released.account_id: environment variable `NOT_SET_ANYWHERE` is not set")
            .await,
        "{}",
        sidecar.logs()
    );

    let ready = client()
        .get(sidecar.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(
        page_has_token(&sidecar, "/").await,
        "old config still serves"
    );
    assert_eq!(
        standin.issued().last().unwrap().body["account_id"],
        "acct-test"
    );
}

const RELOAD_ERRORS: &str = "released_sidecar_config_reloads_total{result=\"error\"}";

/// Waits until the sidecar has counted `n` failed reloads and logged `message`.
async fn reload_refused(sidecar: &Sidecar, n: f64, message: &str) {
    assert!(
        sidecar.wait_for_metric(RELOAD_ERRORS, |v| v >= n).await,
        "reload failure {n} not counted:\n{}",
        sidecar.logs()
    );
    assert!(
        sidecar.wait_for_log(message).await,
        "missing {message:?}:\n{}",
        sidecar.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_configs_are_refused_on_reload_while_the_old_one_keeps_serving() {
    let (_upstream, standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    let good = sidecar.config_text();
    assert!(page_has_token(&sidecar, "/").await);
    let peak_before = sidecar.memory_kib("VmHWM");

    let hostile = [
        (
            alias_bomb(10, 10, 540),
            "e[7]: the document holds more than 100000 values once its aliases are expanded",
        ),
        (
            alias_bomb(7, 12, 384),
            "e[3]: the document holds more than 100000 values once its aliases are expanded",
        ),
        (
            nested_lists(5_000),
            "lists and mappings are nested more than 64 levels deep",
        ),
        (
            nested_lists(20_000),
            "lists and mappings are nested more than 64 levels deep",
        ),
        (
            format!("{good}{}", format!("# {}\n", "x".repeat(1023)).repeat(1025)),
            "cannot read the config file: it is larger than 1 MiB",
        ),
    ];
    for (n, (text, message)) in hostile.iter().enumerate() {
        std::fs::write(&sidecar.config_path, text).unwrap();
        reload_refused(&sidecar, n as f64 + 1.0, message).await;
        assert!(
            page_has_token(&sidecar, "/").await,
            "the old config keeps serving after {message:?}"
        );
    }
    assert!(
        sidecar
            .wait_for_log("config reload failed; still serving generation 1")
            .await
    );
    let growth = sidecar.memory_kib("VmHWM").saturating_sub(peak_before);
    assert!(growth < 64 * 1024, "reloads took {growth} KiB more");

    // The reloader is alive and still applies a good change.
    std::fs::write(
        &sidecar.config_path,
        good.replace("acct-test", "acct-after"),
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            page_has_token(&sidecar, "/").await
                && standin.issued().last().unwrap().body["account_id"] == "acct-after"
        })
        .await,
        "a good config after the hostile ones was not applied:\n{}",
        sidecar.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_swapped_for_a_fifo_is_refused_and_later_changes_still_apply() {
    let (_upstream, standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    assert!(page_has_token(&sidecar, "/").await);

    // Nothing ever writes to it: opening it for reading would wait forever.
    std::fs::remove_file(&sidecar.secret_path).unwrap();
    mkfifo(&sidecar.secret_path);
    reload_refused(
        &sidecar,
        1.0,
        "it is a FIFO (named pipe), not a regular file",
    )
    .await;
    assert!(page_has_token(&sidecar, "/").await, "the old secret serves");

    std::fs::remove_file(&sidecar.secret_path).unwrap();
    standin.set_secret(NEW_SECRET);
    std::fs::write(&sidecar.secret_path, format!("{NEW_SECRET}\n")).unwrap();
    let rotated = eventually(Duration::from_secs(10), || async {
        page_has_token(&sidecar, "/").await
    })
    .await;
    assert!(
        rotated,
        "the reloader did not pick up the new secret after the FIFO:\n{}",
        sidecar.logs()
    );
    assert_eq!(
        standin.issued().last().unwrap().authorization,
        Some(format!("Bearer {NEW_SECRET}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_with_an_inner_line_break_is_refused_and_the_old_one_keeps_serving() {
    let (_upstream, standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    assert!(page_has_token(&sidecar, "/").await);

    std::fs::write(&sidecar.secret_path, "first-half\nsecond-half\n").unwrap();
    reload_refused(
        &sidecar,
        1.0,
        "contains a control character (a line feed) inside the value",
    )
    .await;
    assert!(page_has_token(&sidecar, "/").await, "the old secret serves");
    assert_eq!(
        standin.issued().last().unwrap().authorization,
        Some(format!("Bearer {}", support::sidecar::SECRET))
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_token_requests_total{result=\"transport_error\"}")
            .await,
        0.0
    );
    let logs = sidecar.settled_logs().await;
    assert!(!logs.contains("first-half") && !logs.contains("second-half"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_listen_changes_are_refused_until_restart() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .start()
        .await;

    sidecar.signal(libc::SIGHUP);
    assert!(
        sidecar
            .wait_for_metric(
                "released_sidecar_config_reloads_total{result=\"success\"}",
                |v| v >= 1.0
            )
            .await
    );
    assert!(
        sidecar.wait_for_log("config reloaded: no changes").await,
        "{}",
        sidecar.logs()
    );

    let other_port = support::free_port();
    let moved = sidecar
        .config_text()
        .replace(
            &sidecar.listen.to_string(),
            &format!("127.0.0.1:{other_port}"),
        )
        .replace("acct-test", "acct-moved");
    std::fs::write(&sidecar.config_path, moved).unwrap();
    sidecar.signal(libc::SIGHUP);
    assert!(
        eventually(Duration::from_secs(5), || async {
            sidecar.logs().contains("`listen` changed")
                && sidecar.logs().contains("needs a restart")
        })
        .await,
        "{}",
        sidecar.logs()
    );
    assert!(
        page_has_token(&sidecar, "/").await,
        "the old socket keeps serving"
    );
    assert_eq!(
        standin.issued().last().unwrap().body["account_id"],
        "acct-moved",
        "the rest of the change applies"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", other_port)).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn page_loads_under_load_all_succeed_while_config_and_secret_reload_ten_times() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let secrets = ["rotation-secret-1", "rotation-secret-2"];
    for s in secrets {
        standin.also_accept(s);
    }
    let sidecar = Arc::new(
        SidecarBuilder::new(&upstream.url(), &standin.url())
            .start()
            .await,
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (sidecar, stop) = (Arc::clone(&sidecar), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut done = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let resp = c
                    .get(sidecar.url("/"))
                    .headers(navigation("alice", "alice@example.com"))
                    .send()
                    .await
                    .expect("no request may fail or be reset");
                assert_eq!(resp.status(), 200);
                let body = resp.text().await.expect("complete body");
                assert_eq!(tokens_in(&body).len(), 1, "page not rewritten: {body}");
                done += 1;
            }
            done
        }));
    }

    let template = sidecar.config_text();
    for i in 0..12u32 {
        let before = sidecar
            .metric("released_sidecar_config_reloads_total{result=\"success\"}")
            .await;
        if i % 2 == 0 {
            std::fs::write(&sidecar.secret_path, secrets[(i / 2 % 2) as usize]).unwrap();
        } else {
            std::fs::write(
                &sidecar.config_path,
                template.replace("1500ms", &format!("{}ms", 1500 + i)),
            )
            .unwrap();
        }
        assert!(
            sidecar
                .wait_for_metric(
                    "released_sidecar_config_reloads_total{result=\"success\"}",
                    |v| v > before
                )
                .await,
            "reload {i} not seen:\n{}",
            sidecar.logs()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.expect("worker panicked");
    }
    assert!(total >= 40, "only {total} page loads during the reloads");
    assert!(
        sidecar
            .metric("released_sidecar_config_reloads_total{result=\"success\"}")
            .await
            >= 10.0
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_config_reloads_total{result=\"error\"}")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watched_directories_change_while_events_stream_in_and_rotation_still_works() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(OLD_SECRET).await;
    let in_dir =
        |d: &str| DEFAULT_CONFIG.replace("{secret_file}", &format!("{{dir}}/{d}/shared-secret"));
    let sidecar = Arc::new(
        SidecarBuilder::new(&upstream.url(), &standin.url())
            .template(&in_dir("a"))
            .prepare(|dir| {
                for d in ["a", "b"] {
                    std::fs::create_dir_all(dir.join(d)).unwrap();
                    std::fs::write(dir.join(d).join("shared-secret"), OLD_SECRET).unwrap();
                }
            })
            .start()
            .await,
    );

    // Another file in a watched directory changes all the time: notify's event thread is
    // busy in our callback whenever the reloader changes what is watched.
    let stop = Arc::new(AtomicBool::new(false));
    let noise = {
        let (path, stop) = (sidecar.dir.path().join("noise.txt"), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0u64;
            // An event every millisecond or so: continuous, without taking a whole core
            // from the sidecar on a 2-core machine.
            while !stop.load(Ordering::Relaxed) && n < 60_000 {
                std::fs::write(&path, n.to_string()).unwrap();
                std::thread::sleep(Duration::from_micros(500));
                n += 1;
            }
        })
    };
    let loads = {
        let (sidecar, stop) = (Arc::clone(&sidecar), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut done = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let resp = sidecar.page_load("/").await;
                assert_eq!(resp.status(), 200, "every request is answered");
                resp.text().await.expect("complete body");
                done += 1;
            }
            done
        })
    };

    let reloads = "released_sidecar_config_reloads_total{result=\"success\"}";
    for (i, dir) in ["b", "a", "b", "a", "b", "a"].into_iter().enumerate() {
        let before = sidecar.metric(reloads).await;
        sidecar.write_config(&in_dir(dir).replace("1500ms", &format!("{}ms", 1500 + i)));
        assert!(
            sidecar.wait_for_metric(reloads, |v| v > before).await,
            "reload {i} (secret moved to {dir}/) not seen:\n{}",
            sidecar.logs()
        );
    }

    standin.set_secret(NEW_SECRET);
    std::fs::write(
        sidecar.dir.path().join("a").join("shared-secret"),
        NEW_SECRET,
    )
    .unwrap();
    let rotated = eventually(Duration::from_secs(5), || async {
        page_has_token(&sidecar, "/").await
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    noise.join().unwrap();
    let done = loads.await.expect("page loads never failed");
    assert!(
        rotated,
        "rotation not picked up within 5s:\n{}",
        sidecar.logs()
    );
    assert!(done > 0);

    let heartbeat = sidecar
        .metric("released_sidecar_config_reloader_heartbeat_timestamp_seconds")
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        now - heartbeat < 15.0,
        "reloader heartbeat is stale: {heartbeat} vs {now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_upstream_ca_bundle_is_used_without_a_restart() {
    let (upstream, app_ca) =
        Upstream::start_tls(|_| Reply::with(200, "text/plain", "over tls")).await;
    let (_other, other_ca) = Upstream::start_tls(|_| Reply::with(200, "text/plain", "")).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .file("app-ca.pem", &other_ca)
        .extra("upstream_tls: { ca_file: \"{dir}/app-ca.pem\" }")
        .start()
        .await;
    let status =
        |s: Arc<Sidecar>| async move { client().get(s.url("/")).send().await.unwrap().status() };
    let sidecar = Arc::new(sidecar);
    assert_eq!(
        status(Arc::clone(&sidecar)).await,
        502,
        "the wrong CA refuses the app"
    );

    std::fs::write(sidecar.dir.path().join("app-ca.pem"), &app_ca).unwrap();
    let trusted = eventually(Duration::from_secs(5), || {
        let s = Arc::clone(&sidecar);
        async move { status(s).await == 200 }
    })
    .await;
    assert!(trusted, "CA rotation not picked up:\n{}", sidecar.logs());
    assert!(sidecar.wait_for_log("upstream CA bundle changed").await);
}
