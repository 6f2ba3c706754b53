//! Zero-downtime binary upgrade: `run --upgrade` takes the listening sockets of the
//! running process over (SIGQUIT), which drains and exits; no client notices.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{client, navigation, tokens_in, Reply, SidecarBuilder, StandIn, Upstream};

const PAGE: &str = "<html><body><released-page></released-page></body></html>";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_upgrades_back_to_back_under_load_lose_no_request() {
    let upstream = Upstream::start(|req| match req.path.as_str() {
        "/api" => Reply::with(200, "application/json", "{\"ok\":true}"),
        _ => Reply::html(PAGE),
    })
    .await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let mut sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .extra("upgrade_sock: \"{dir}/upgrade.sock\"\n")
        .workers(3)
        .start()
        .await;
    let upgrade_sock = sidecar.dir.path().join("upgrade.sock");
    let url = |path: &str| sidecar.url(path);
    let port = sidecar.listen.port();
    assert_eq!(
        listening_sockets(port),
        3,
        "one listening socket per worker"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU32::new(0));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (stop, failures) = (Arc::clone(&stop), Arc::clone(&failures));
        let (page, api) = (url("/"), url("/api"));
        workers.push(tokio::spawn(async move {
            // One keep-alive client per worker: connections outlive the handovers.
            let c = client();
            let mut done = 0u32;
            while !stop.load(Ordering::Relaxed) && done < 20_000 {
                let ok = if worker % 2 == 0 {
                    match c
                        .get(&page)
                        .headers(navigation("alice", "alice@example.com"))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => {
                            r.text().await.is_ok_and(|body| tokens_in(&body).len() == 1)
                        }
                        _ => false,
                    }
                } else {
                    match c.get(&api).send().await {
                        Ok(r) if r.status() == 200 => r.text().await.is_ok(),
                        Ok(r) => {
                            eprintln!("{}: status {}", api, r.status());
                            false
                        }
                        Err(e) => {
                            eprintln!("{api}: {e:?}");
                            false
                        }
                    }
                };
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                done += 1;
            }
            done
        }));
    }

    tokio::time::sleep(Duration::from_millis(300)).await;
    for round in 1..=3 {
        let old = sidecar.upgrade(&upgrade_sock).await;
        assert_eq!(
            old.code(),
            Some(0),
            "round {round}: the old process exits 0"
        );
        let ready = support::eventually(Duration::from_secs(10), || async {
            client()
                .get(sidecar.admin_url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        assert!(
            ready,
            "round {round}: the new process is not ready:\n{}",
            sidecar.logs()
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "{total} requests, some failed or lost their token:\n{}",
        sidecar.logs()
    );
    assert!(total > 100, "only {total} requests during three upgrades");
    assert_eq!(
        listening_sockets(port),
        3,
        "every worker's socket was handed over, none bound anew"
    );
    let body = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(tokens_in(&body).len(), 1, "the last process rewrites pages");
}

/// Listening TCP sockets on `port` (IPv4, any process), from /proc/net/tcp.
fn listening_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 3 && fields[1].ends_with(&local) && fields[3] == "0A"
        })
        .count()
}

/// Kills a process the test did not spawn itself (a successor) when the test ends.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill(2) on a pid this test learned from the process itself.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// The `MAINPID=` of the next `READY=1` notification on `socket`.
async fn next_ready(socket: &tokio::net::UnixDatagram) -> i32 {
    let mut buf = [0u8; 512];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(20), socket.recv(&mut buf))
            .await
            .expect("a notification within 20s")
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.lines().any(|l| l == "READY=1") {
            return text
                .lines()
                .find_map(|l| l.strip_prefix("MAINPID="))
                .expect("READY=1 names the main pid")
                .parse()
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_successor_which_tells_systemd_it_is_the_main_process() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify.sock");
    let notifications = tokio::net::UnixDatagram::bind(&notify_path).unwrap();
    let mut sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .extra("upgrade_sock: \"{dir}/upgrade.sock\"\n")
        .env("NOTIFY_SOCKET", notify_path.to_str().unwrap())
        .start()
        .await;
    let first = next_ready(&notifications).await;
    assert_eq!(
        first,
        sidecar.pid(),
        "READY=1 from the process systemd started"
    );

    sidecar.signal(libc::SIGUSR2);
    let successor = next_ready(&notifications).await;
    let _cleanup = KillOnDrop(successor);
    assert_ne!(
        successor, first,
        "the successor names itself the main process"
    );
    let old = sidecar.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(old.and_then(|s| s.code()), Some(0), "{}", sidecar.logs());
    // SAFETY: signal 0 only checks that the process exists.
    assert_eq!(
        unsafe { libc::kill(successor, 0) },
        0,
        "the successor runs on"
    );
    let body = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(tokens_in(&body).len(), 1, "and serves:\n{}", sidecar.logs());
    assert!(sidecar.logs().contains("SIGUSR2: new process started"));
}
