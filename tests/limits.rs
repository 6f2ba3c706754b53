//! Hostile clients and faulty peers: the request-head deadline, the connection cap, the
//! admin listener at the descriptor limit, and token calls that die with their request.

mod support;

use std::time::Duration;

use support::raw::{connect, read_until_close, statuses};
use support::standin::Behavior;
use support::{Reply, SidecarBuilder, StandIn, Upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAGE: &str = "<html><body><released-page></released-page></body></html>";

#[tokio::test]
async fn a_head_trickled_past_the_deadline_gets_408_and_a_vanishing_client_is_quiet() {
    let (upstream, _standin, sidecar) = support::start_with(
        |_| Reply::html(PAGE),
        |b| b.extra("timeouts: { client_header: 1s }"),
    )
    .await;

    // One byte every 200 ms never trips a per-read idle timeout; the head deadline does.
    let mut slow = connect(sidecar.listen).await;
    let trickle = async {
        for byte in b"GET / HTTP/1.1\r\nhost: a\r\nx-slow: "
            .iter()
            .chain(&[b'z'; 40])
        {
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), trickle).await;
    let text = read_until_close(&mut slow, Duration::from_secs(5)).await;
    assert_eq!(statuses(&text), [408], "{text}");

    // A client that leaves mid-head is counted, not an error.
    let mut leaver = connect(sidecar.listen).await;
    leaver.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
    drop(leaver);
    // A connection that never asks anything is closed at the deadline, without an answer.
    let mut silent = connect(sidecar.listen).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut answer));
    assert!(
        read.await.is_ok(),
        "an idle connection outlived the deadline"
    );
    assert!(answer.is_empty(), "{answer:?}");

    assert!(
        sidecar
            .wait_for_metric(
                r#"released_sidecar_rejected_requests_total{reason="header_timeout"}"#,
                |v| v == 1.0
            )
            .await
    );
    assert!(
        sidecar
            .wait_for_metric("released_sidecar_client_head_disconnects_total", |v| v
                == 1.0)
            .await
    );
    // Keep-alive requests still work: the deadline restarts for every head.
    let client = support::client();
    for _ in 0..2 {
        let resp = client.get(sidecar.url("/ok")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    let logs = sidecar.settled_logs().await;
    assert!(logs.contains("status=408"), "{logs}");
    assert!(!logs.contains("ERROR"), "{logs}");
    assert_eq!(upstream.seen().len(), 2);
}

/// A stand-in that answers after 3 s (the page's token deadline is 1.5 s) and a sidecar
/// in front of `upstream_url`.
async fn slow_token_setup(upstream_url: &str) -> (StandIn, support::sidecar::Sidecar) {
    let standin = StandIn::start(support::sidecar::SECRET).await;
    standin.set_behavior(Behavior::Slow(Duration::from_secs(3)));
    let sidecar = SidecarBuilder::new(upstream_url, &standin.url())
        .start()
        .await;
    (standin, sidecar)
}

/// The call was aborted for `reason` and never ran to its own timeout.
async fn assert_aborted(sidecar: &support::sidecar::Sidecar, reason: &str) {
    let series = format!(r#"released_sidecar_token_calls_aborted_total{{reason="{reason}"}}"#);
    assert!(
        sidecar.wait_for_metric(&series, |v| v == 1.0).await,
        "{}",
        sidecar.metrics().await
    );
    // Past the 1.5 s token deadline: an unaborted call would have counted a timeout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let timeouts = sidecar
        .metric(r#"released_sidecar_token_requests_total{result="timeout"}"#)
        .await;
    assert_eq!(timeouts, 0.0, "{}", sidecar.metrics().await);
}

#[tokio::test]
async fn a_token_call_is_aborted_when_the_client_goes_away() {
    let upstream =
        Upstream::start(|_| Reply::Delayed(Duration::from_secs(2), Box::new(Reply::html(PAGE))))
            .await;
    let (_standin, sidecar) = slow_token_setup(&upstream.url()).await;
    let mut client = connect(sidecar.listen).await;
    client
        .write_all(
            b"GET / HTTP/1.1\r\nhost: a\r\naccept: text/html\r\nx-forwarded-user: alice\r\n\
              x-forwarded-email: alice@example.com\r\n\r\n",
        )
        .await
        .unwrap();
    assert!(
        sidecar
            .wait_for_metric("released_sidecar_in_flight_requests", |v| v == 1.0)
            .await
    );
    drop(client);
    assert_aborted(&sidecar, "client_gone").await;
}

#[tokio::test]
async fn a_token_call_is_aborted_when_the_app_fails() {
    let closed_port = support::free_port();
    let (_standin, sidecar) = slow_token_setup(&format!("http://127.0.0.1:{closed_port}")).await;
    let resp = sidecar.page_load("/").await;
    assert_eq!(resp.status(), 502);
    assert_aborted(&sidecar, "upstream_error").await;
}

#[tokio::test]
async fn a_token_call_is_aborted_when_the_page_is_not_rewritable() {
    let upstream = Upstream::start(|_| Reply::with(200, "application/json", "{}")).await;
    let (_standin, sidecar) = slow_token_setup(&upstream.url()).await;
    let resp = sidecar.page_load("/").await;
    assert_eq!(resp.status(), 200);
    assert_aborted(&sidecar, "not_rewritable").await;
}

#[tokio::test]
async fn connections_past_the_cap_wait_in_the_backlog_while_admin_answers() {
    let (_upstream, _standin, sidecar) = support::start_with(
        |_| Reply::with(200, "text/plain", "ok"),
        // Three workers, one cap: the slots are shared, whichever socket a connection lands on.
        |b| b.workers(3).extra("limits: { max_connections: 2 }"),
    )
    .await;
    // The readiness probes have come and gone; hold both slots with idle connections.
    assert!(
        sidecar
            .wait_for_metric("released_sidecar_client_connections", |v| v == 0.0)
            .await
    );
    let first = connect(sidecar.listen).await;
    let _second = connect(sidecar.listen).await;
    assert!(
        sidecar
            .wait_for_metric("released_sidecar_client_connections", |v| v == 2.0)
            .await
    );

    let mut third = connect(sidecar.listen).await;
    third
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = read_until_close(&mut third, Duration::from_millis(700)).await;
    assert_eq!(early, "", "a connection past the cap was served");
    let health = support::client()
        .get(sidecar.admin_url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        sidecar.metric("released_sidecar_client_connections").await,
        2.0
    );

    drop(first);
    let text = read_until_close(&mut third, Duration::from_secs(5)).await;
    assert_eq!(statuses(&text), [200], "{text}");
}

#[tokio::test]
async fn the_admin_listener_backs_off_at_the_descriptor_limit() {
    const NOFILE: u64 = 128;
    let (_upstream, _standin, sidecar) = support::start_with(
        |_| Reply::with(200, "text/plain", "ok"),
        |b| b.max_open_files(NOFILE),
    )
    .await;
    // Idle proxy connections use up the sidecar's descriptors.
    let mut held = Vec::new();
    for _ in 0..NOFILE {
        held.push(connect(sidecar.listen).await);
    }
    assert!(
        support::eventually(Duration::from_secs(5), || async {
            sidecar.open_files() as u64 >= NOFILE
        })
        .await,
        "the sidecar has {} of {NOFILE} descriptors open",
        sidecar.open_files()
    );

    // A health probe now cannot be accepted; the listener must wait, not spin.
    let probe = tokio::spawn({
        let url = sidecar.admin_url("/healthz");
        async move { support::client().get(url).send().await.map(|r| r.status()) }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = sidecar.cpu_seconds();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = sidecar.cpu_seconds() - before;
    eprintln!("CPU used at the descriptor limit: {used:.3} s in 2 s");
    // A tight accept() loop burns a core (or what a busy machine leaves of one); backing
    // off uses next to nothing. The bound is the 10 % of a core the issue allows.
    assert!(
        used < 0.2,
        "{used:.2} s of CPU in 2 s at the descriptor limit"
    );

    for tcp in &mut held {
        let _ = tcp.shutdown().await;
    }
    drop(held);
    let status = tokio::time::timeout(Duration::from_secs(10), probe)
        .await
        .expect("health answered once descriptors freed")
        .unwrap()
        .expect("health request");
    assert_eq!(status, 200);
}

/// Lets this test process (and the sidecar it starts) hold `n` descriptors.
fn allow_open_files(n: u64) -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_max < n {
            return false;
        }
        limit.rlim_cur = limit.rlim_cur.max(n);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
    }
}

#[tokio::test]
async fn memory_comes_back_after_a_connection_flood() {
    const FLOOD: usize = 2000;
    if !allow_open_files(FLOOD as u64 + 512) {
        support::tools::skip(
            &format!("the hard descriptor limit is below {}", FLOOD + 512),
            "raise it: ulimit -Hn 4096",
        );
        return;
    }
    let (_upstream, _standin, sidecar) = support::start(|_| Reply::html(PAGE)).await;
    for _ in 0..20 {
        assert_eq!(sidecar.page_load("/").await.status(), 200);
    }
    let before = sidecar.memory_kib("VmRSS");

    // Every connection starts a head and stalls, as a slowloris client would.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut tcp = connect(sidecar.listen).await;
        tcp.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n")
            .await
            .unwrap();
        flood.push(tcp);
    }
    assert!(
        sidecar
            .wait_for_metric("released_sidecar_client_connections", |v| v >= FLOOD as f64)
            .await
    );
    let during = sidecar.memory_kib("VmRSS");
    drop(flood);
    assert!(
        sidecar
            .wait_for_metric("released_sidecar_client_connections", |v| v == 0.0)
            .await
    );
    // The issue allows twice the pre-flood size; half of that again is left only if the
    // freed memory really goes back to the OS (without the trim it stays near `during`).
    let returned = support::eventually(Duration::from_secs(20), || async {
        sidecar.memory_kib("VmRSS") <= before * 3 / 2
    })
    .await;
    let after = sidecar.memory_kib("VmRSS");
    eprintln!("RSS before {before} KiB, with {FLOOD} connections {during} KiB, after {after} KiB");
    assert!(
        returned,
        "RSS before {before} KiB, during {during} KiB, after {after} KiB"
    );
}

#[tokio::test]
async fn a_page_that_multiplies_into_gigabytes_streams_in_bounded_memory() {
    const TAG: &[u8] = b"<released-page></released-page>";
    const TOKEN: usize = 4096;
    // 8 MiB of empty embed tags, each of which would grow by the 4 KB token: 1.1 GB.
    let chunk: bytes::Bytes = TAG.repeat(64 * 1024 / TAG.len()).into();
    let chunks = vec![(Duration::ZERO, chunk.clone()); 128];
    let (_upstream, standin, sidecar) = support::start(move |_| Reply::Stream {
        status: 200,
        headers: vec![("content-type".into(), "text/html".into())],
        chunks: chunks.clone(),
    })
    .await;
    standin.set_behavior(Behavior::LongToken(TOKEN));

    let mut tcp = connect(sidecar.listen).await;
    tcp.write_all(
        b"GET / HTTP/1.1\r\nhost: a\r\naccept: text/html\r\nx-forwarded-user: alice\r\n\
          x-forwarded-email: alice@example.com\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    // A slow reader: 64 KiB at a time with pauses, so the sidecar must wait for it.
    let mut total = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
            if total % (1024 * 1024) < 64 * 1024 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(25), read_all)
        .await
        .expect("the page streamed within 25 s");
    let input = chunk.len() * 128;
    let budget = released_sidecar::page::rewrite::MAX_TOKEN_BYTES_PER_PAGE;
    // The whole page, with the page's budget of token copies and no more.
    assert!(total > input + budget / 2, "{total} bytes out of {input}");
    assert!(
        total < input + budget + 64 * 1024,
        "{total} bytes out of {input}"
    );
    let peak = sidecar.memory_kib("VmHWM");
    eprintln!("{total} bytes out, peak RSS {peak} KiB");
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
    assert!(
        sidecar
            .wait_for_metric("released_sidecar_rewrite_bailouts_total", |v| v == 1.0)
            .await
    );
}

/// A head of `size` bytes (request line, 1 KiB fields, the blank line) that the sidecar
/// accepts whole.
fn head_of(size: usize) -> Vec<u8> {
    let mut head = b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n".to_vec();
    let mut i = 0;
    while size - head.len() - 2 > 1024 + 16 {
        head.extend_from_slice(format!("x-pad-{i:03}: {}\r\n", "p".repeat(1024)).as_bytes());
        i += 1;
    }
    let last = size - head.len() - 2 - "x-last: \r\n".len();
    head.extend_from_slice(format!("x-last: {}\r\n\r\n", "l".repeat(last)).as_bytes());
    assert_eq!(head.len(), size);
    head
}

#[tokio::test]
async fn a_maximum_size_head_trickled_byte_by_byte_costs_cpu_linear_in_its_size() {
    let size = released_sidecar::edge::front::MAX_HEAD_BYTES;
    let head = head_of(size);
    let (upstream, _standin, sidecar) =
        support::start(|_| Reply::with(200, "text/plain", "ok")).await;
    let mut tcp = connect(sidecar.listen).await;
    tcp.set_nodelay(true).unwrap();
    // The readiness probes are done: what the sidecar uses from here is this client's.
    assert!(
        sidecar
            .wait_for_metric("released_sidecar_client_connections", |v| v == 1.0)
            .await
    );
    let idle = {
        let (cpu, wall) = (sidecar.cpu_seconds(), std::time::Instant::now());
        tokio::time::sleep(Duration::from_secs(1)).await;
        (sidecar.cpu_seconds() - cpu) / wall.elapsed().as_secs_f64()
    };

    // One TCP segment per byte, in bursts with a pause after each, so that the sidecar
    // reads the head a few bytes at a time, as it would from a slow client. The CPU it
    // uses is measured for each half of the head (above what it uses idle): the second
    // half costs what the first did when each read is scanned once, three times the scan
    // of the first when every read rescans all that is held.
    const BURST: usize = 32;
    let (body, end) = head.split_at(size - BURST);
    let mut halves = Vec::new();
    for half in body.chunks(body.len().div_ceil(2)) {
        let (cpu, wall) = (sidecar.cpu_seconds(), std::time::Instant::now());
        for burst in half.chunks(BURST) {
            for byte in burst {
                tcp.write_all(std::slice::from_ref(byte)).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        halves.push(sidecar.cpu_seconds() - cpu - idle * wall.elapsed().as_secs_f64());
    }
    tcp.write_all(end).await.unwrap();
    let text = read_until_close(&mut tcp, Duration::from_secs(10)).await;
    assert_eq!(statuses(&text), [200], "{text}");
    assert_eq!(upstream.seen().len(), 1);

    let (first, second) = (halves[0], halves[1]);
    eprintln!(
        "{size}-byte head in 1-byte writes: first half {first:.3} s of CPU, second half \
         {second:.3} s (idle: {idle:.3} s/s)"
    );
    // 20 ms: the clock-tick granularity of /proc/<pid>/stat, twice.
    assert!(
        second < first * 1.5 + 0.02,
        "the second half of the head cost {second:.3} s of CPU, the first {first:.3} s: \
         the head guard rescans what it holds"
    );
}
