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

/// The uid the tests act as when they play another local user.
const NOBODY: u32 = 65534;

/// Whether this test can act as another local user (it must run as root); prints SKIP
/// otherwise, and fails under CI=true.
fn can_switch_user(test: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root to act as another user"
    );
    eprintln!("SKIP {test}: needs root to act as another user");
    false
}

/// Runs `f` as another local user (`nobody`) on a thread of its own: the raw system calls
/// change only the calling thread, unlike libc's wrappers, so the test process keeps its
/// own identity everywhere else.
fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: -1 keeps the real and saved ids; only this thread changes, and it ends
        // with `f`.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, -1, NOBODY, -1), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, -1, NOBODY, -1), 0);
        }
        f()
    })
    .join()
    .unwrap()
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Another local user's listener at `path`, made before the sidecar gets there. Its
/// thread answers with how many descriptors it received over every connection it
/// accepted within `for_how_long`.
fn squat(path: &std::path::Path, for_how_long: Duration) -> std::thread::JoinHandle<usize> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    let listener = {
        let path = path.to_path_buf();
        as_nobody(move || std::os::unix::net::UnixListener::bind(path).unwrap())
    };
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + for_how_long;
        let mut received = 0;
        while std::time::Instant::now() < deadline {
            let Ok((conn, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let mut cmsg = nix::cmsg_space!([RawFd; 32]);
            let Ok(msg) = nix::sys::socket::recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
            ) else {
                continue;
            };
            for c in msg.cmsgs().into_iter().flatten() {
                if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                    received += fds.len();
                    // SAFETY: just received, owned by nothing else; closed right away.
                    fds.into_iter()
                        .for_each(|fd| drop(unsafe { OwnedFd::from_raw_fd(fd) }));
                }
            }
        }
        received
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatter_on_upgrade_sock_gets_no_socket_and_the_old_process_keeps_serving() {
    const TEST: &str =
        "a_squatter_on_upgrade_sock_gets_no_socket_and_the_old_process_keeps_serving";
    if !can_switch_user(TEST) {
        return;
    }
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        .prepare(|dir| std::fs::create_dir(dir.join("up")).unwrap())
        .extra("upgrade_sock: \"{dir}/up/upgrade.sock\"\n")
        .start()
        .await;
    // Private at start; shared afterwards (by mistake, or a directory like /tmp), so that
    // another user can create the socket's name before any successor does.
    let up = sidecar.dir.path().join("up");
    set_mode(&up, 0o1777);
    let squatter = squat(&up.join("upgrade.sock"), Duration::from_secs(4));

    // SIGUSR2: the running process checks the place before it starts a successor there.
    sidecar.signal(libc::SIGUSR2);
    let refused = "released_sidecar_upgrades_total{result=\"refused\"}";
    assert!(
        sidecar.wait_for_metric(refused, |v| v == 1.0).await,
        "SIGUSR2 refused and counted:\n{}",
        sidecar.logs()
    );
    // SIGQUIT (a successor started by hand): the listener is another user's.
    sidecar.signal(libc::SIGQUIT);
    assert!(
        sidecar.wait_for_metric(refused, |v| v == 2.0).await,
        "SIGQUIT refused and counted:\n{}",
        sidecar.logs()
    );
    assert_eq!(squatter.join().unwrap(), 0, "the squatter received sockets");

    let logs = sidecar.logs();
    assert!(
        logs.contains("ERROR")
            && logs.contains(&format!(
                "directory {} is writable by other users",
                up.display()
            )),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("(pid {}, uid {NOBODY})", std::process::id())),
        "{logs}"
    );
    assert_eq!(
        sidecar
            .metric("released_sidecar_upgrades_total{result=\"success\"}")
            .await,
        0.0
    );
    let ready = client()
        .get(sidecar.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "still ready");
    let body = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(
        tokens_in(&body).len(),
        1,
        "and still serving:\n{}",
        sidecar.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_sock_in_a_directory_others_can_write_to_is_refused_at_start() {
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let shared = SidecarBuilder::new(&upstream.url(), &standin.url())
        .prepare(|dir| {
            std::fs::create_dir(dir.join("shared")).unwrap();
            set_mode(&dir.join("shared"), 0o777);
        })
        .extra("upgrade_sock: \"{dir}/shared/upgrade.sock\"\n")
        .start_err()
        .await;
    assert!(
        shared.contains("released-sidecar: upgrade_sock ")
            && shared.contains("/shared is writable by other users (mode 0777)")
            && shared.contains("another local user could take the listening sockets over"),
        "{shared}"
    );
    let tmp = SidecarBuilder::new(&upstream.url(), &standin.url())
        .extra("upgrade_sock: /tmp/released-sidecar-test.sock\n")
        .start_err()
        .await;
    assert!(
        tmp.contains("the directory /tmp is writable by other users (mode 1777; the sticky bit"),
        "{tmp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_successors_socket_is_0600_and_another_user_cannot_hand_it_a_socket() {
    const TEST: &str = "the_successors_socket_is_0600_and_another_user_cannot_hand_it_a_socket";
    if !can_switch_user(TEST) {
        return;
    }
    let upstream = Upstream::start(|_| Reply::html(PAGE)).await;
    let standin = StandIn::start(support::sidecar::SECRET).await;
    let mut sidecar = SidecarBuilder::new(&upstream.url(), &standin.url())
        // Others may look in (0755): only the socket's own mode keeps them out.
        .prepare(|dir| {
            set_mode(dir, 0o755);
            std::fs::create_dir(dir.join("up")).unwrap();
            set_mode(&dir.join("up"), 0o755);
        })
        .extra("upgrade_sock: \"{dir}/up/upgrade.sock\"\n")
        .start()
        .await;
    let upgrade_sock = sidecar.dir.path().join("up/upgrade.sock");
    let old = sidecar
        .upgrade_with(&upgrade_sock, |path| {
            use std::os::unix::fs::{FileTypeExt, MetadataExt};
            let meta = std::fs::symlink_metadata(path).unwrap();
            assert!(meta.file_type().is_socket());
            assert_eq!(meta.mode() & 0o777, 0o600, "mode of {}", path.display());
            // A stranger's socket on a port of its own, offered as the proxy's.
            let path = path.to_path_buf();
            let offered =
                as_nobody(move || std::os::unix::net::UnixStream::connect(path).map(|_| ()));
            assert_eq!(
                offered.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::PermissionDenied),
                "another user reached the successor"
            );
        })
        .await;
    assert_eq!(old.code(), Some(0), "{}", sidecar.logs());
    let body = sidecar.page_load("/").await.text().await.unwrap();
    assert_eq!(
        tokens_in(&body).len(),
        1,
        "the successor serves:\n{}",
        sidecar.logs()
    );
}
