//! systemd's service notification protocol (`sd_notify`), so the unit can be
//! `Type=notify`: `READY=1` once the proxy accepts, with `MAINPID=` so that a successor
//! started for a binary upgrade becomes the unit's main process before the old one exits.
//! Without `$NOTIFY_SOCKET` (not under systemd) it does nothing.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=value` assignments) to systemd, if it listens.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|socket| {
        let bytes = path.as_encoded_bytes();
        match bytes.strip_prefix(b"@") {
            // An abstract-namespace socket (systemd's usual choice).
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &addr)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    });
    if let Err(e) = sent {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// `READY=1` with this process as the unit's main process.
pub fn ready() {
    notify(&format!("READY=1\nMAINPID={}", std::process::id()));
}
