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
        .start()
        .await;
    let upgrade_sock = sidecar.dir.path().join("upgrade.sock");
    let url = |path: &str| sidecar.url(path);

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
    let body = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(tokens_in(&body).len(), 1, "the last process rewrites pages");
}
