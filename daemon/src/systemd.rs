//! sd_notify without a dependency: under systemd `Type=notify`, `NOTIFY_SOCKET` names a
//! datagram socket (a path, or an abstract name written with a leading `@`).

use std::os::unix::net::UnixDatagram;

pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let result = UnixDatagram::unbound().and_then(|socket| {
        let path = path.to_string_lossy();
        if let Some(abstract_name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?;
            socket.send_to_addr(state.as_bytes(), &addr)
        } else {
            socket.send_to(state.as_bytes(), &*path)
        }
    });
    if let Err(e) = result {
        tracing::warn!("sd_notify {state}: {e}");
    }
}
