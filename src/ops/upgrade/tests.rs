use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::ops::server::worker_address;

const NOBODY: u32 = 65534;

fn mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Whether this test can act as another user (it must run as root); prints SKIP
/// otherwise, and fails under CI=true.
fn can_switch_user(test: &str) -> bool {
    if euid() == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test} needs root to act as another user"
    );
    eprintln!("SKIP {test}: needs root to act as another user");
    false
}

/// Runs `f` on a new thread whose effective user and group are `nobody`. Only that thread
/// changes: the raw system calls act on the calling thread, unlike libc's wrappers.
fn as_nobody<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: setresgid/setresuid with -1 keep the real and saved ids; they touch no
        // memory and affect only this thread, which ends with `f`.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, -1, NOBODY, -1), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, -1, NOBODY, -1), 0);
        }
        f()
    })
    .join()
    .unwrap()
}

#[test]
fn only_the_same_user_or_root_may_hand_over_or_receive() {
    for (peer, uid, allowed) in [
        (1000, 1000, true),
        (0, 1000, true),
        (0, 0, true),
        (1001, 1000, false),
        (NOBODY, 0, false),
        (1000, 0, false),
    ] {
        assert_eq!(peer_allowed(peer, uid), allowed, "peer {peer}, us {uid}");
    }
}

#[test]
fn a_directory_others_can_write_to_is_refused_for_the_socket_and_above_it_unless_sticky() {
    let me = 1000;
    for (owner, m, holds_socket, want) in [
        (me, 0o40700, true, None),
        (0, 0o40755, true, None),
        (me, 0o40755, true, None),
        (NOBODY, 0o40700, true, Some("belongs to uid 65534")),
        (NOBODY, 0o40755, false, Some("belongs to uid 65534")),
        (
            me,
            0o40770,
            true,
            Some("writable by other users (mode 0770)"),
        ),
        (
            0,
            0o40777,
            true,
            Some("writable by other users (mode 0777)"),
        ),
        (0, 0o41777, true, Some("not from creating its name first")),
        // /tmp above a private directory: others cannot rename our entry.
        (0, 0o41777, false, None),
        (
            0,
            0o40777,
            false,
            Some("writable by other users (mode 0777)"),
        ),
        (
            0,
            0o40775,
            false,
            Some("writable by other users (mode 0775)"),
        ),
    ] {
        let got = dir_verdict(owner, m, me, holds_socket);
        match want {
            None => assert_eq!(got, Ok(()), "owner {owner} mode {m:o}"),
            Some(text) => {
                let why = got.unwrap_err();
                assert!(why.contains(text), "owner {owner} mode {m:o}: {why}");
            }
        }
    }
}

#[test]
fn the_default_socket_is_in_the_runtime_directory_else_a_private_one_in_tmp() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |key: &str| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| OsString::from(v))
        }
    };
    let systemd = UpgradeSock::resolve_in(
        None,
        &env(&[("RUNTIME_DIRECTORY", "/run/released-sidecar:/run/other")]),
        61234,
    );
    assert_eq!(
        systemd.path(),
        Path::new("/run/released-sidecar/upgrade.sock")
    );
    assert!(!systemd.create_dir, "systemd owns its runtime directory");

    for vars in [
        &[][..],
        &[("RUNTIME_DIRECTORY", "relative/dir")][..],
        &[("XDG_RUNTIME_DIR", "/run/user/61234")][..],
    ] {
        let fallback = UpgradeSock::resolve_in(None, &env(vars), 61234);
        assert_eq!(
            fallback.path(),
            Path::new("/tmp/released-sidecar-61234/upgrade.sock"),
            "{vars:?}"
        );
        assert!(fallback.create_dir);
    }

    let configured = UpgradeSock::resolve_in(
        Some(Path::new("/srv/up.sock")),
        &env(&[("RUNTIME_DIRECTORY", "/run/x")]),
        1,
    );
    assert_eq!(configured.path(), Path::new("/srv/up.sock"));
}

#[test]
fn private_directories_pass_and_shared_ones_are_refused_with_the_reason() {
    let uid = euid();
    let root = tempfile::tempdir().unwrap();
    let private = root.path().join("private");
    std::fs::create_dir(&private).unwrap();
    mode(&private, 0o700);
    let sock = private.join("upgrade.sock");
    check_private_dir(&sock, &private, uid).unwrap();

    let shared = root.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    mode(&shared, 0o1777);
    let err = check_private_dir(&shared.join("u.sock"), &shared, uid).unwrap_err();
    assert_eq!(err.result(), "refused");
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "the directory {} is writable by other users (mode 1777",
            shared.display()
        )),
        "{text}"
    );

    let err = check_private_dir(Path::new("/tmp/u.sock"), Path::new("/tmp"), uid).unwrap_err();
    assert!(
        err.to_string().contains("directory /tmp is writable"),
        "{err}"
    );

    // A private directory inside one that anybody may rename it out of.
    mode(&shared, 0o777);
    let inner = shared.join("inner");
    std::fs::create_dir(&inner).unwrap();
    mode(&inner, 0o700);
    let err = check_private_dir(&inner.join("u.sock"), &inner, uid).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("the directory {} is writable", shared.display())),
        "{err}"
    );

    // Through a symbolic link, the real directory is judged.
    let link = root.path().join("link");
    std::os::unix::fs::symlink(&shared, &link).unwrap();
    assert!(check_private_dir(&link.join("u.sock"), &link, uid).is_err());
}

#[test]
fn a_directory_of_another_user_is_refused() {
    if !can_switch_user("a_directory_of_another_user_is_refused") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let theirs = root.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    mode(&theirs, 0o700);
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = check_private_dir(&theirs.join("u.sock"), &theirs, euid()).unwrap_err();
    assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
}

#[test]
fn the_default_directory_is_created_private() {
    let root = tempfile::tempdir().unwrap();
    let sock = UpgradeSock {
        path: root.path().join("made").join("upgrade.sock"),
        create_dir: true,
    };
    sock.check().unwrap();
    assert!(!root.path().join("made").exists(), "start creates nothing");
    sock.prepare_dir().unwrap();
    let meta = std::fs::metadata(root.path().join("made")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o700);
    // Made shared later: refused at the next use.
    mode(&root.path().join("made"), 0o777);
    assert_eq!(sock.prepare_dir().unwrap_err().result(), "refused");
}

#[test]
fn only_our_own_stale_socket_is_cleared_from_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let uid = euid();
    let path = dir.path().join("upgrade.sock");
    clear_path(&path, uid).unwrap();

    drop(UnixListener::bind(&path).unwrap());
    clear_path(&path, uid).unwrap();
    assert!(!path.exists(), "a stale socket of ours is removed");

    std::fs::write(&path, "not a socket").unwrap();
    let err = clear_path(&path, uid).unwrap_err();
    assert!(
        err.to_string().contains("exists and is not a socket"),
        "{err}"
    );
    assert!(path.exists(), "never removed");
    std::fs::remove_file(&path).unwrap();

    if can_switch_user("only_our_own_stale_socket_is_cleared_from_the_path") {
        drop(UnixListener::bind(&path).unwrap());
        std::os::unix::fs::chown(&path, Some(NOBODY), None).unwrap();
        let err = clear_path(&path, uid).unwrap_err();
        assert_eq!(err.result(), "refused");
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        assert!(path.exists(), "never removed");
    }
}

#[test]
fn the_socket_appears_with_mode_0600() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let _listener = listen_private(&path).unwrap();
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary name left"
    );
}

/// Two worker sockets on one port, as `run` binds them.
fn worker_sockets() -> (SocketAddr, Vec<String>, ListenSockets) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let keys: Vec<String> = (0..2).map(|w| worker_address(listen, w)).collect();
    let mut sockets = ListenSockets::default();
    sockets.bind_missing(listen, &keys, true).unwrap();
    (listen, keys, sockets)
}

fn private_sock() -> (tempfile::TempDir, UpgradeSock) {
    let dir = tempfile::tempdir().unwrap();
    let sock = UpgradeSock {
        path: dir.path().join("upgrade.sock"),
        create_dir: false,
    };
    (dir, sock)
}

#[test]
fn the_sockets_reach_the_successor_which_confirms_and_removes_the_path() {
    let (listen, keys, sockets) = worker_sockets();
    let (_dir, sock) = private_sock();
    let receiver = {
        let (sock, keys) = (sock.clone(), keys.clone());
        std::thread::spawn(move || {
            let received = receive(&sock, &keys, listen, Duration::from_secs(10)).unwrap();
            let addrs: Vec<_> = received
                .sockets
                .0
                .iter()
                .map(|(k, fd)| (k.clone(), listening_on(fd)))
                .collect();
            received
                .ack
                .expect("this code's sender waits")
                .confirm()
                .unwrap();
            addrs
        })
    };
    hand_over(
        sock.path(),
        &sockets,
        None,
        Duration::from_secs(10),
        &mut || Ok(()),
    )
    .unwrap();
    let addrs = receiver.join().unwrap();
    assert_eq!(
        addrs,
        keys.iter()
            .map(|k| (k.clone(), Some(listen)))
            .collect::<Vec<_>>()
    );
    assert!(!sock.path().exists(), "the successor removes the path");
}

#[test]
fn a_running_process_of_the_older_version_hands_over_with_pingoras_sender() {
    let (listen, keys, sockets) = worker_sockets();
    let (_dir, sock) = private_sock();
    let receiver = {
        let (sock, keys) = (sock.clone(), keys.clone());
        std::thread::spawn(move || receive(&sock, &keys, listen, Duration::from_secs(10)))
    };
    let mut table = pingora::server::Fds::new();
    for (key, fd) in &sockets.0 {
        table.add(key.clone(), fd.as_raw_fd());
    }
    // pingora's sender retries every second until the path exists.
    let path = sock.path().to_str().unwrap().to_string();
    table.send_to_sock(path.as_str()).unwrap();
    let received = receiver.join().unwrap().unwrap();
    assert!(received.ack.is_none(), "pingora's sender does not wait");
    assert_eq!(received.sockets.0.len(), 2);
}

#[test]
fn a_socket_that_does_not_listen_on_the_configured_address_is_refused() {
    let (listen, keys, _ours) = worker_sockets();
    let (_elsewhere, _, mut strangers) = worker_sockets();
    // The stranger's socket, under our worker's key.
    strangers.0.truncate(1);
    strangers.0[0].0 = keys[0].clone();
    let (_dir, sock) = private_sock();
    let receiver = {
        let (sock, keys) = (sock.clone(), keys.clone());
        std::thread::spawn(move || receive(&sock, &keys, listen, Duration::from_secs(10)))
    };
    let sent = hand_over(
        sock.path(),
        &strangers,
        None,
        Duration::from_secs(10),
        &mut || Ok(()),
    );
    let err = receiver.join().unwrap().unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("instead of a listener on {listen}")),
        "{err}"
    );
    assert!(sent.is_err(), "and the sender hears no ready");
}

#[test]
fn the_sender_refuses_a_listener_that_is_not_the_process_it_started() {
    let (_, _, sockets) = worker_sockets();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("upgrade.sock");
    let _impostor = UnixListener::bind(&path).unwrap();
    let err = hand_over(
        &path,
        &sockets,
        Some(1),
        Duration::from_secs(5),
        &mut || Ok(()),
    )
    .unwrap_err();
    assert_eq!(err.result(), "refused");
    assert!(
        err.to_string()
            .contains("not the new process this one started (pid 1)"),
        "{err}"
    );
}

#[test]
fn a_peer_of_another_user_is_refused_at_both_ends() {
    if !can_switch_user("a_peer_of_another_user_is_refused_at_both_ends") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Open to everybody on purpose, to reach the SO_PEERCRED checks themselves.
    mode(dir.path(), 0o777);

    // The sender: a listener of nobody's gets nothing.
    let path = dir.path().join("squatted.sock");
    let squatter = {
        let path = path.clone();
        as_nobody(move || UnixListener::bind(path).unwrap())
    };
    let (_, _, sockets) = worker_sockets();
    let err = hand_over(
        &path,
        &sockets,
        None,
        Duration::from_secs(5),
        &mut || Ok(()),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("uid {NOBODY}): it runs as another user")),
        "{err}"
    );
    squatter.set_nonblocking(true).unwrap();
    let (conn, _) = squatter.accept().unwrap();
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let mut buf = [0u8; 64];
    let mut iov = [IoSliceMut::new(&mut buf)];
    conn.set_nonblocking(true).unwrap();
    let got = socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::empty(),
    );
    assert!(
        matches!(got, Ok(ref m) if m.bytes == 0) || got.is_err(),
        "the squatter received nothing"
    );

    // The receiver: nobody's connection is dropped unread, ours is taken.
    let path = dir.path().join("open.sock");
    let listener = UnixListener::bind(&path).unwrap();
    mode(&path, 0o666);
    let stranger = {
        let path = path.clone();
        as_nobody(move || {
            let mut s = UnixStream::connect(path).unwrap();
            s.write_all(b"n").unwrap();
            s
        })
    };
    let mut ours = UnixStream::connect(&path).unwrap();
    ours.write_all(b"r").unwrap();
    let mut taken = accept_trusted(
        &listener,
        &path,
        euid(),
        Instant::now() + Duration::from_secs(5),
    )
    .unwrap();
    let mut byte = [0u8; 1];
    taken.read_exact(&mut byte).unwrap();
    assert_eq!(
        &byte, b"r",
        "the stranger's connection was not the one taken"
    );
    drop(stranger);
}
