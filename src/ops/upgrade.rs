//! Binary upgrade without downtime: the running process hands the proxy's listening
//! sockets to a `run --upgrade` successor over a Unix socket at `upgrade_sock`
//! (SCM_RIGHTS), so no connection is ever refused.
//!
//! pingora has a handover of its own, but it trusts the file system too much for a
//! process that reads identity headers and cookies: its receiver creates the socket mode
//! 0666, ignores a failed removal of whatever already sits at the path (and then panics on
//! `EADDRINUSE`), and its sender hands the sockets to whoever listens there. On a shared
//! directory such as `/tmp` another local user could take the sockets (and the traffic)
//! over, or hand the successor a socket of their own. So this module replaces both ends
//! and leaves pingora only its table of listening sockets, which it fills from here
//! ([`Worker`]); the smallest design that holds, in four rules:
//!
//! 1. **A private directory.** `upgrade_sock` defaults to `$RUNTIME_DIRECTORY/upgrade.sock`
//!    (systemd's `RuntimeDirectory=`), else `/tmp/released-sidecar-<uid>/upgrade.sock`,
//!    whose directory the sidecar creates mode 0700 when an upgrade needs it.
//!    (`$XDG_RUNTIME_DIR` is not used: a login shell has it and a service does not, so a
//!    successor started by hand would look elsewhere than its predecessor.) `run` refuses
//!    to start when that directory exists and another user could create names in it:
//!    owned by anyone but this user or root, or group/other-writable (`/tmp` itself
//!    included: its sticky bit stops others from removing our socket, not from creating
//!    its name first), or below a directory another user could rename it out of (the
//!    checks OpenSSH's `StrictModes` makes). An existing path that is not this user's
//!    socket is an error, never removed.
//! 2. **Mode 0600 from the first moment.** The successor binds under a temporary name,
//!    sets the mode, then renames it into place, so the path appears only once it listens
//!    and only this user (and root) can connect.
//! 3. **Both ends check the peer** (`SO_PEERCRED`): only this user or root may hand over or
//!    receive. Under SIGUSR2 the old process also requires the listener to be the very
//!    child it started. A refused peer is logged at ERROR; the successor keeps waiting for
//!    the real one, the old process keeps serving.
//! 4. **Readiness is a message from the successor**, not the existence of a file: once
//!    every worker of the successor serves on the received sockets it writes `ready`; only
//!    then does the old process drain. Anything else (no listener, a refused peer, the
//!    successor exiting or staying silent) leaves the old process serving, logged at ERROR
//!    and counted in `released_sidecar_upgrades_total{result="refused"|"failed"}`.
//!
//! Defense in depth on the successor's side: every received socket must be a listening TCP
//! socket bound to `listen`, so a stray peer cannot make it serve on a port of its choice.
//!
//! The wire format is pingora's (the addresses, space-separated, with the descriptors in
//! one SCM_RIGHTS message), preceded by a version word, so a successor built from this code
//! also takes the sockets from a running process of an older version that used pingora's
//! sender (that one does not wait for `ready`).

use std::ffi::OsString;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use nix::sys::socket::{self, sockopt, ControlMessage, ControlMessageOwned, MsgFlags};
use pingora::apps::ServerApp;
use pingora::server::{ListenFds, ShutdownWatch};
use pingora::services::listening::Service as ListeningService;
use pingora::services::Service as PingoraService;

use crate::metrics::Metrics;

/// The first word of a handover message from this code (pingora's own sender has none).
const MAGIC: &str = "released-sidecar-upgrade/1";
/// What the successor writes once it serves on the received sockets.
const READY: &[u8] = b"ready\n";
/// Most descriptors one SCM_RIGHTS message carries on Linux (`SCM_MAX_FD`).
const MAX_SOCKETS: usize = 253;
/// Bound on the addresses text of one handover (`MAX_SOCKETS` worker addresses fit).
const MAX_MESSAGE: usize = 64 * 1024;
/// How long `run --upgrade` waits for the running process to connect.
pub const RECEIVE_WAIT: Duration = Duration::from_secs(10);
/// SIGUSR2: how long the new process may take until it waits on `upgrade_sock`.
const SUCCESSOR_START: Duration = Duration::from_secs(10);
/// SIGQUIT: how long to look for a successor started by hand (it should already wait).
const QUIT_CONNECT: Duration = Duration::from_secs(5);
/// From sending the sockets until the successor says it serves on them.
const TAKEOVER: Duration = Duration::from_secs(15);
/// Backlog of a freshly bound proxy socket; pingora raises it when it takes the socket.
const LISTEN_BACKLOG: i32 = 1024;

/// Why a binary upgrade was refused or failed; the running process keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The directory of `upgrade_sock` lets another user create or swap names in it.
    #[error(
        "upgrade_sock {path}: the directory {dir} {why}, so another local user could take the \
         listening sockets over in a binary upgrade; use a directory that only uid {uid} \
         (or root) can write to, or leave upgrade_sock unset for a private default"
    )]
    UnsafeDir {
        /// The socket path.
        path: PathBuf,
        /// The directory found unsafe (the socket's own or one above it).
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
        /// This process's user.
        uid: u32,
    },
    /// The directory of `upgrade_sock` cannot be used.
    #[error("upgrade_sock {path}: directory {dir}: {source}")]
    Dir {
        /// The socket path.
        path: PathBuf,
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Something other than this user's socket sits at `upgrade_sock`.
    #[error("upgrade_sock {path} {why}; remove it (after checking who made it) and try again")]
    Occupied {
        /// The socket path.
        path: PathBuf,
        /// What is there.
        why: String,
    },
    /// The process on the other end of `upgrade_sock` is not one to trust with the sockets.
    #[error("refused the process on upgrade_sock {path} (pid {pid}, uid {peer_uid}): {why}")]
    Peer {
        /// The socket path.
        path: PathBuf,
        /// The peer's process id (from `SO_PEERCRED`).
        pid: i32,
        /// The peer's user id (from `SO_PEERCRED`).
        peer_uid: u32,
        /// Why it is refused.
        why: String,
    },
    /// Nothing happened in time.
    #[error("upgrade_sock {path}: {what}")]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// What did not happen.
        what: String,
    },
    /// The new process did not start, or exited before taking over.
    #[error("the new process {0}")]
    Successor(String),
    /// The other end broke the handover protocol.
    #[error("upgrade_sock {path}: {what}")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// An I/O error during the handover.
    #[error("upgrade_sock {path}: {what}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

impl UpgradeError {
    /// The `result` label of `released_sidecar_upgrades_total` for this error: `refused`
    /// when a safety check said no, `failed` when the new process did not take over.
    pub fn result(&self) -> &'static str {
        match self {
            Self::UnsafeDir { .. } | Self::Occupied { .. } | Self::Peer { .. } => "refused",
            Self::Dir { .. }
            | Self::Timeout { .. }
            | Self::Successor(_)
            | Self::Protocol { .. }
            | Self::Io { .. } => "failed",
        }
    }
}

/// This process's effective user, the one the checks protect.
fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Whether a process running as `peer_uid` may hand sockets to, or take them from, a
/// process running as `uid`: the same user, or root (who could read our memory anyway).
fn peer_allowed(peer_uid: u32, uid: u32) -> bool {
    peer_uid == uid || peer_uid == 0
}

/// Why a directory owned by `owner` with `mode` would let a user other than `uid` and
/// root create or swap names where the socket lives. `holds_socket`: the socket's own
/// directory (sticky does not help there: the name can be taken before we create it);
/// otherwise a directory above it (sticky is enough: nobody else can rename our entry).
fn dir_verdict(owner: u32, mode: u32, uid: u32, holds_socket: bool) -> Result<(), String> {
    if owner != uid && owner != 0 {
        return Err(format!("belongs to uid {owner}"));
    }
    let others_write = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if others_write && (holds_socket || !sticky) {
        let hint = if holds_socket && sticky {
            "; the sticky bit keeps others from removing the socket, not from creating its name first"
        } else {
            ""
        };
        return Err(format!(
            "is writable by other users (mode {:04o}{hint})",
            mode & 0o7777
        ));
    }
    Ok(())
}

/// Where the upgrade socket lives, and whether its directory is the default one the
/// sidecar creates.
#[derive(Debug, Clone)]
pub struct UpgradeSock {
    path: PathBuf,
    create_dir: bool,
}

impl UpgradeSock {
    /// `configured`, or the default for this environment and user (see the module doc).
    pub fn resolve(configured: Option<&Path>) -> Self {
        Self::resolve_in(configured, &|key| std::env::var_os(key), euid())
    }

    fn resolve_in(
        configured: Option<&Path>,
        env: &dyn Fn(&str) -> Option<OsString>,
        uid: u32,
    ) -> Self {
        if let Some(path) = configured {
            return Self {
                path: path.to_path_buf(),
                create_dir: false,
            };
        }
        // systemd lists one directory per `RuntimeDirectory=` entry, colon-separated.
        let runtime = env("RUNTIME_DIRECTORY").and_then(|dirs| {
            let first = dirs.as_bytes().split(|b| *b == b':').next()?;
            let dir = Path::new(std::ffi::OsStr::from_bytes(first));
            dir.is_absolute().then(|| dir.to_path_buf())
        });
        match runtime {
            Some(dir) => Self {
                path: dir.join("upgrade.sock"),
                create_dir: false,
            },
            None => Self {
                path: PathBuf::from(format!("/tmp/released-sidecar-{uid}/upgrade.sock")),
                create_dir: true,
            },
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("/"))
    }

    /// The check at start: the directory, if it exists yet, must be private (a missing one
    /// is created, or reported, when an upgrade needs it: a read-only root file system
    /// without upgrades must still start).
    pub fn check(&self) -> Result<(), UpgradeError> {
        match std::fs::symlink_metadata(self.dir()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.create_dir {
                    tracing::warn!(
                        upgrade_sock = %self.path.display(),
                        "the directory of upgrade_sock does not exist: binary upgrades fail until it does"
                    );
                }
                Ok(())
            }
            _ => check_private_dir(&self.path, self.dir(), euid()),
        }
    }

    /// Before an upgrade: the directory exists (the default one is created, 0700) and is
    /// private.
    fn prepare_dir(&self) -> Result<(), UpgradeError> {
        if self.create_dir {
            let created = std::fs::DirBuilder::new().mode(0o700).create(self.dir());
            match created {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(UpgradeError::Dir {
                        path: self.path.clone(),
                        dir: self.dir().to_path_buf(),
                        source,
                    })
                }
            }
        }
        check_private_dir(&self.path, self.dir(), euid())
    }
}

/// Checks `dir` (the directory of `path`) and every directory above it with
/// [`dir_verdict`], after resolving symbolic links.
fn check_private_dir(path: &Path, dir: &Path, uid: u32) -> Result<(), UpgradeError> {
    let io = |dir: &Path, source| UpgradeError::Dir {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        source,
    };
    let real = dir.canonicalize().map_err(|e| io(dir, e))?;
    for (i, d) in real.ancestors().enumerate() {
        let meta = std::fs::metadata(d).map_err(|e| io(d, e))?;
        if i == 0 && !meta.is_dir() {
            return Err(io(d, std::io::Error::other("not a directory")));
        }
        dir_verdict(meta.uid(), meta.mode(), uid, i == 0).map_err(|why| {
            UpgradeError::UnsafeDir {
                path: path.to_path_buf(),
                dir: d.to_path_buf(),
                why,
                uid,
            }
        })?;
    }
    Ok(())
}

/// Clears `path` for a new socket: nothing there, or this user's stale socket (removed).
/// Anything else is an error, never "ready" and never removed.
fn clear_path(path: &Path, uid: u32) -> Result<(), UpgradeError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(UpgradeError::Io {
                path: path.to_path_buf(),
                what: "cannot inspect it",
                source,
            })
        }
    };
    let occupied = |why: String| UpgradeError::Occupied {
        path: path.to_path_buf(),
        why,
    };
    if meta.uid() != uid {
        return Err(occupied(format!(
            "exists and belongs to uid {}",
            meta.uid()
        )));
    }
    if !meta.file_type().is_socket() {
        return Err(occupied("exists and is not a socket".into()));
    }
    std::fs::remove_file(path).map_err(|e| occupied(format!("exists and cannot be removed ({e})")))
}

/// Binds a listener at `path` that is mode 0600 from the moment the path exists.
fn listen_private(path: &Path) -> Result<UnixListener, UpgradeError> {
    let io = |what, source| UpgradeError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    let temp = path.with_file_name(format!(".upgrade-{}.new", std::process::id()));
    // Our own leftover from a crash with the same pid, in our private directory.
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp).map_err(|e| io("cannot listen", e))?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(io("cannot put the socket in place", e));
    }
    Ok(listener)
}

/// The credentials of the process at the other end of `stream`: (pid, uid).
fn peer_of(stream: &UnixStream) -> std::io::Result<(i32, u32)> {
    let cred = socket::getsockopt(stream, sockopt::PeerCredentials)?;
    Ok((cred.pid(), cred.uid()))
}

/// The proxy's listening sockets, one per worker, keyed as pingora keys them (the
/// worker's address text, `server::worker_address`).
#[derive(Debug, Default)]
pub struct ListenSockets(Vec<(String, OwnedFd)>);

impl ListenSockets {
    /// Binds a socket on `listen` for every key that has none yet (all of them at a fresh
    /// start; a successor binds the ones its predecessor did not have). `reuse_port`: the
    /// workers share the port (SO_REUSEPORT).
    pub fn bind_missing(
        &mut self,
        listen: SocketAddr,
        keys: &[String],
        reuse_port: bool,
    ) -> std::io::Result<()> {
        use socket2::{Domain, Protocol, Socket, Type};
        for key in keys {
            if self.0.iter().any(|(k, _)| k == key) {
                continue;
            }
            let socket = Socket::new(
                Domain::for_address(listen),
                Type::STREAM,
                Some(Protocol::TCP),
            )?;
            // As pingora binds its own: a restart need not wait for TIME_WAIT.
            socket.set_reuse_address(true)?;
            if reuse_port {
                socket.set_reuse_port(true)?;
            }
            socket.bind(&listen.into())?;
            socket.listen(LISTEN_BACKLOG)?;
            // pingora's listener expects a non-blocking socket.
            socket.set_nonblocking(true)?;
            self.0.push((key.clone(), socket.into()));
        }
        Ok(())
    }

    /// A descriptor of the socket for `key`, for pingora (this set keeps its own, for the
    /// next handover).
    pub fn dup(&self, key: &str) -> std::io::Result<Option<OwnedFd>> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, fd)| fd.try_clone())
            .transpose()
    }

    fn try_clone(&self) -> std::io::Result<Self> {
        self.0
            .iter()
            .map(|(k, fd)| Ok((k.clone(), fd.try_clone()?)))
            .collect::<std::io::Result<_>>()
            .map(Self)
    }
}

/// What `run --upgrade` received: the sockets, and the way to tell the old process once
/// this one serves on them.
#[derive(Debug)]
pub struct Received {
    /// The listening sockets, checked against `listen`.
    pub sockets: ListenSockets,
    /// `None` when the old process does not wait for `ready` (pingora's own sender).
    pub ack: Option<Ack>,
}

/// The connection to the old process, kept until this process serves.
#[derive(Debug)]
pub struct Ack(UnixStream);

impl Ack {
    /// Tells the old process that this one serves, so it drains.
    fn confirm(mut self) -> std::io::Result<()> {
        self.0.write_all(READY)?;
        self.0.flush()
    }
}

/// `run --upgrade`: waits up to `wait` on `sock` for the running process, refusing every
/// peer that is not this user or root, and takes its listening sockets for `keys` (each
/// must listen on `listen`; unknown keys are closed, as pingora does).
pub fn receive(
    sock: &UpgradeSock,
    keys: &[String],
    listen: SocketAddr,
    wait: Duration,
) -> Result<Received, UpgradeError> {
    sock.prepare_dir()?;
    let uid = euid();
    clear_path(&sock.path, uid)?;
    let listener = listen_private(&sock.path)?;
    // The path goes with this attempt, received or not; the next one makes its own.
    let _remove = RemoveOnDrop(&sock.path);
    tracing::info!(
        upgrade_sock = %sock.path.display(),
        "waiting for the running process's listening sockets: send it SIGQUIT now"
    );
    let deadline = Instant::now() + wait;
    let stream = accept_trusted(&listener, &sock.path, uid, deadline)?;
    let (sockets, acknowledges) = read_sockets(&stream, &sock.path, deadline)?;
    let mut taken = ListenSockets::default();
    for (key, fd) in sockets {
        if !keys.contains(&key) {
            tracing::warn!(address = %key, "closing a received listening socket no worker uses (workers changed?)");
            continue;
        }
        match listening_on(&fd) {
            Some(addr) if addr == listen => taken.0.push((key, fd)),
            found => {
                return Err(UpgradeError::Protocol {
                    path: sock.path.clone(),
                    what: format!(
                        "the socket sent for {key} is {} instead of a listener on {listen}",
                        found.map_or("not a listening TCP socket".into(), |a| format!(
                            "a listener on {a}"
                        ))
                    ),
                })
            }
        }
    }
    Ok(Received {
        sockets: taken,
        ack: acknowledges.then_some(Ack(stream)),
    })
}

/// The address `fd` listens on, if it is a listening TCP socket.
fn listening_on(fd: &OwnedFd) -> Option<SocketAddr> {
    if !socket::getsockopt(fd, sockopt::AcceptConn).ok()? {
        return None;
    }
    socket2::SockRef::from(fd).local_addr().ok()?.as_socket()
}

/// Removes the socket file when the receiving side is done with it.
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// Accepts connections until one comes from this user or root; logs and drops the others.
fn accept_trusted(
    listener: &UnixListener,
    path: &Path,
    uid: u32,
    deadline: Instant,
) -> Result<UnixStream, UpgradeError> {
    let io = |what, source| UpgradeError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(UpgradeError::Timeout {
                path: path.to_path_buf(),
                what: format!(
                    "no running process handed its sockets over within {}s",
                    RECEIVE_WAIT.as_secs()
                ),
            });
        }
        // accept(2) honours SO_RCVTIMEO on Linux: a bounded wait without polling.
        socket2::SockRef::from(listener)
            .set_read_timeout(Some(left))
            .map_err(|e| io("cannot set a timeout", e))?;
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(io("cannot accept", e)),
        };
        let (pid, peer_uid) =
            peer_of(&stream).map_err(|e| io("cannot read the peer's credentials", e))?;
        if peer_allowed(peer_uid, uid) {
            return Ok(stream);
        }
        // Dropping the connection discards whatever it sent, descriptors included.
        tracing::error!(
            upgrade_sock = %path.display(),
            pid,
            uid = peer_uid,
            "refused a process of another user that connected to upgrade_sock; still waiting for the running sidecar"
        );
    }
}

/// Reads one handover message: the descriptors and their addresses, and whether the
/// sender waits for `ready`.
fn read_sockets(
    stream: &UnixStream,
    path: &Path,
    deadline: Instant,
) -> Result<(Vec<(String, OwnedFd)>, bool), UpgradeError> {
    let protocol = |what: String| UpgradeError::Protocol {
        path: path.to_path_buf(),
        what,
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(100));
    stream
        .set_read_timeout(Some(left))
        .map_err(|source| UpgradeError::Io {
            path: path.to_path_buf(),
            what: "cannot set a timeout",
            source,
        })?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let (fds, bytes, flags) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = socket::recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            // Not inherited by anything this process starts later.
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| UpgradeError::Io {
            path: path.to_path_buf(),
            what: "cannot receive the sockets",
            source: e.into(),
        })?;
        let mut fds = Vec::new();
        for c in msg
            .cmsgs()
            .map_err(|e| protocol(format!("bad control data: {e}")))?
        {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: descriptors just installed in this process by recvmsg(2); nothing
                // else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (fds, msg.bytes, msg.flags)
    };
    if flags.intersects(MsgFlags::MSG_CTRUNC | MsgFlags::MSG_TRUNC) {
        return Err(protocol(format!(
            "the message was larger than {MAX_SOCKETS} sockets or {MAX_MESSAGE} bytes"
        )));
    }
    let text = std::str::from_utf8(&buf[..bytes])
        .map_err(|_| protocol("the addresses are not UTF-8".into()))?;
    let mut keys: Vec<&str> = text.split_ascii_whitespace().collect();
    let acknowledges = keys.first() == Some(&MAGIC);
    if acknowledges {
        keys.remove(0);
    }
    if keys.is_empty() || keys.len() != fds.len() {
        return Err(protocol(format!(
            "{} addresses for {} sockets",
            keys.len(),
            fds.len()
        )));
    }
    Ok((
        keys.into_iter().map(String::from).zip(fds).collect(),
        acknowledges,
    ))
}

/// Sends `sockets` to the process listening on `path` once it has proved to be this user
/// or root (and, with `expect_pid`, that very process), then waits for its `ready`.
/// `alive` is asked between connection attempts (an error ends the wait).
fn hand_over(
    path: &Path,
    sockets: &ListenSockets,
    expect_pid: Option<u32>,
    connect_for: Duration,
    alive: &mut dyn FnMut() -> Result<(), UpgradeError>,
) -> Result<(), UpgradeError> {
    let io = |what, source| UpgradeError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    if sockets.0.len() > MAX_SOCKETS {
        return Err(UpgradeError::Protocol {
            path: path.to_path_buf(),
            what: format!("cannot hand over more than {MAX_SOCKETS} sockets"),
        });
    }
    let mut stream = connect(path, Instant::now() + connect_for, alive)?;
    let (pid, peer_uid) =
        peer_of(&stream).map_err(|e| io("cannot read the peer's credentials", e))?;
    let refuse = |why: String| UpgradeError::Peer {
        path: path.to_path_buf(),
        pid,
        peer_uid,
        why,
    };
    if !peer_allowed(peer_uid, euid()) {
        return Err(refuse(format!(
            "it runs as another user than this process (uid {})",
            euid()
        )));
    }
    if let Some(expected) = expect_pid {
        if u32::try_from(pid).ok() != Some(expected) {
            return Err(refuse(format!(
                "it is not the new process this one started (pid {expected})"
            )));
        }
    }
    let mut text = String::from(MAGIC);
    for (key, _) in &sockets.0 {
        text.push(' ');
        text.push_str(key);
    }
    let fds: Vec<RawFd> = sockets.0.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| io("cannot set a timeout", e))?;
    socket::sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(text.as_bytes())],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(|e| io("cannot send the sockets", e.into()))?;
    stream
        .set_read_timeout(Some(TAKEOVER))
        .map_err(|e| io("cannot set a timeout", e))?;
    let mut answer = [0u8; READY.len()];
    match stream.read_exact(&mut answer) {
        Ok(()) if answer == READY => Ok(()),
        Ok(()) => Err(UpgradeError::Protocol {
            path: path.to_path_buf(),
            what: "the new process answered something other than ready".into(),
        }),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(UpgradeError::Timeout {
                path: path.to_path_buf(),
                what: format!(
                    "the new process took the sockets but did not report serving within {}s",
                    TAKEOVER.as_secs()
                ),
            })
        }
        Err(_) => Err(UpgradeError::Successor(
            "closed the connection without taking over (its log says why)".into(),
        )),
    }
}

/// Connects to `path`, retrying while nobody listens there yet.
fn connect(
    path: &Path,
    deadline: Instant,
    alive: &mut dyn FnMut() -> Result<(), UpgradeError>,
) -> Result<UnixStream, UpgradeError> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let io = |what, source| UpgradeError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    let addr = SockAddr::unix(path).map_err(|e| io("not a usable socket path", e))?;
    loop {
        alive()?;
        let socket =
            Socket::new(Domain::UNIX, Type::STREAM, None).map_err(|e| io("cannot connect", e))?;
        // connect(2) to a listener with a full backlog waits up to the send timeout.
        socket
            .set_write_timeout(Some(Duration::from_secs(1)))
            .map_err(|e| io("cannot set a timeout", e))?;
        match socket.connect(&addr) {
            Ok(()) => return Ok(UnixStream::from(OwnedFd::from(socket))),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(io("cannot connect", e)),
        }
        if Instant::now() >= deadline {
            return Err(UpgradeError::Timeout {
                path: path.to_path_buf(),
                what: "no new process waits there".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The running process's side: hands the listening sockets over on SIGUSR2 (starting the
/// successor first) or SIGQUIT, and keeps them until then.
pub struct Upgrader {
    sock: UpgradeSock,
    sockets: Mutex<Option<ListenSockets>>,
    metrics: Arc<Metrics>,
}

impl Upgrader {
    /// The handover of `sockets` over `sock`, counted in `metrics`.
    pub fn new(sock: UpgradeSock, sockets: ListenSockets, metrics: Arc<Metrics>) -> Self {
        Self {
            sock,
            sockets: Mutex::new(Some(sockets)),
            metrics,
        }
    }

    /// Closes this process's own copies of the listening sockets: at shutdown (so the port
    /// refuses connections once pingora closes its copies too) or once handed over.
    pub fn release(&self) {
        drop(
            self.sockets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }

    /// SIGUSR2: starts this process's own command line again with `--upgrade` and hands
    /// it the sockets. Returns whether it took over (otherwise this process keeps serving;
    /// the error is logged and counted).
    pub async fn on_sigusr2(&self) -> bool {
        let result = self.start_successor().await;
        self.record("SIGUSR2", result)
    }

    /// SIGQUIT: hands the sockets to a `run --upgrade` started by hand. Returns whether it
    /// took over (otherwise this process keeps serving; the error is logged and counted).
    pub async fn on_sigquit(&self) -> bool {
        let result = match self.copies() {
            Ok(sockets) => {
                let path = self.sock.path.clone();
                tokio::task::spawn_blocking(move || {
                    hand_over(&path, &sockets, None, QUIT_CONNECT, &mut || Ok(()))
                })
                .await
                .unwrap_or_else(|e| Err(UpgradeError::Successor(format!("handover task: {e}"))))
            }
            Err(e) => Err(e),
        };
        self.record("SIGQUIT", result)
    }

    fn record(&self, signal: &str, result: Result<(), UpgradeError>) -> bool {
        match result {
            Ok(()) => {
                self.metrics.upgrades.with_label_values(&["success"]).inc();
                tracing::info!("{signal}: the new process serves on the listening sockets; finishing in-flight requests");
                true
            }
            Err(e) => {
                self.metrics.upgrades.with_label_values(&[e.result()]).inc();
                tracing::error!(error = %e, "{signal}: binary upgrade {}; still serving", e.result());
                false
            }
        }
    }

    /// Copies of the sockets for a handover (the originals stay until it succeeds).
    fn copies(&self) -> Result<ListenSockets, UpgradeError> {
        let guard = self.sockets.lock().unwrap_or_else(PoisonError::into_inner);
        let sockets = guard.as_ref().ok_or_else(|| {
            UpgradeError::Successor("cannot be given sockets this process no longer holds".into())
        })?;
        sockets.try_clone().map_err(|source| UpgradeError::Io {
            path: self.sock.path.clone(),
            what: "cannot copy the listening sockets",
            source,
        })
    }

    async fn start_successor(&self) -> Result<(), UpgradeError> {
        self.sock.prepare_dir()?;
        // A stale socket of ours would be connected to before the successor replaces it.
        clear_path(&self.sock.path, euid())?;
        let sockets = self.copies()?;
        // argv[0], not current_exe(): after a package upgrade /proc/self/exe is the old,
        // deleted file, while the path names the new binary.
        let mut args: Vec<OsString> = std::env::args_os().collect();
        if args.is_empty() {
            return Err(UpgradeError::Successor(
                "cannot be started: this process has no argv[0]".into(),
            ));
        }
        let program = args.remove(0);
        if !args.iter().any(|a| a == "--upgrade") {
            args.push("--upgrade".into());
        }
        let mut child = std::process::Command::new(&program)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| {
                UpgradeError::Successor(format!("cannot be started ({program:?}): {e}"))
            })?;
        let pid = child.id();
        tracing::info!(pid, "SIGUSR2: new process started; handing the listening sockets over once it waits on upgrade_sock");
        let path = self.sock.path.clone();
        let (result, mut child) = tokio::task::spawn_blocking(move || {
            let mut alive = || match child.try_wait() {
                Ok(None) => Ok(()),
                Ok(Some(status)) => Err(exited(status)),
                Err(e) => Err(UpgradeError::Successor(format!("cannot be watched: {e}"))),
            };
            let result = hand_over(&path, &sockets, Some(pid), SUCCESSOR_START, &mut alive);
            (result, child)
        })
        .await
        .map_err(|e| UpgradeError::Successor(format!("handover task: {e}")))?;
        if result.is_err() {
            // It may hold the sockets already: it must not serve next to this process.
            let _ = child.kill();
            let _ = child.wait();
        }
        result
    }
}

fn exited(status: ExitStatus) -> UpgradeError {
    UpgradeError::Successor(format!("exited ({status}) before taking over"))
}

/// After `run --upgrade` received the sockets: once every worker serves on them, tells
/// the old process (which then drains). If that cannot be said in time, this process
/// exits 1, since the old one keeps serving and two generations must not.
pub fn confirm_when_started(ack: Ack, started: mpsc::Receiver<()>, workers: usize) {
    let spawned = std::thread::Builder::new()
        .name("upgrade-ack".into())
        .spawn(move || {
            let deadline = Instant::now() + TAKEOVER;
            for _ in 0..workers {
                let left = deadline.saturating_duration_since(Instant::now());
                if started.recv_timeout(left).is_err() {
                    give_up("the proxy workers did not start in time");
                }
            }
            if let Err(e) = ack.confirm() {
                give_up(&format!("cannot tell the running process ({e})"));
            }
        });
    if spawned.is_err() {
        give_up("cannot start the thread that confirms it");
    }
}

fn give_up(why: &str) -> ! {
    tracing::error!("binary upgrade: {why}; the running process keeps serving, exiting");
    crate::logging::flush();
    std::process::exit(1)
}

/// A proxy worker's pingora service, started on a listening socket this process bound or
/// received: it puts the socket in pingora's table under the worker's address before
/// pingora would bind one itself, then reports the worker started.
pub struct Worker<A> {
    service: ListeningService<A>,
    key: String,
    socket: Option<OwnedFd>,
    started: mpsc::Sender<()>,
}

impl<A> Worker<A> {
    /// `service` on `socket` (keyed `key`, the address its listener was added with).
    pub fn new(
        service: ListeningService<A>,
        key: String,
        socket: Option<OwnedFd>,
        started: mpsc::Sender<()>,
    ) -> Self {
        Self {
            service,
            key,
            socket,
            started,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> PingoraService for Worker<A> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let (Some(table), Some(socket)) = (&fds, self.socket.take()) {
            table.lock().add(self.key.clone(), socket.into_raw_fd());
        }
        // Nobody waits when this is not an upgrade.
        let _ = self.started.send(());
        PingoraService::start_service(&mut self.service, fds, shutdown, listeners_per_fd).await;
    }

    fn name(&self) -> &str {
        PingoraService::name(&self.service)
    }

    fn threads(&self) -> Option<usize> {
        PingoraService::threads(&self.service)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        PingoraService::listen_addresses(&self.service)
    }
}

#[cfg(test)]
mod tests;
