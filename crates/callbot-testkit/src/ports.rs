//! Free loopback ports for peers, so parallel tests never collide.
//!
//! The OS picks the port (bind port 0); the socket is closed before the peer binds
//! it, so there is a small race window. Ports are also remembered per process so one
//! test binary never hands out the same port twice.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A UDP port on `ip` that is free now (and, if `also_tcp`, free for TCP too), never
/// returned twice by this process.
pub fn free_udp_port_on(ip: IpAddr, also_tcp: bool) -> u16 {
    for _ in 0..200 {
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).expect("bind UDP port 0");
        let port = sock.local_addr().expect("local addr").port();
        if also_tcp && std::net::TcpListener::bind(SocketAddr::new(ip, port)).is_err() {
            continue;
        }
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no free UDP port found on {ip}");
}

/// A free UDP port on 127.0.0.1.
pub fn free_udp_port() -> u16 {
    free_udp_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST), false)
}

/// `n` consecutive free UDP ports on 127.0.0.1 starting at an even port (RTP/RTCP pairs,
/// peers that also bind port+1). Returns the first.
pub fn free_udp_port_range(n: u16) -> u16 {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    for _ in 0..500 {
        let base = free_udp_port_on(ip, false) & !1;
        if base < 1024 || base.checked_add(n).is_none() {
            continue;
        }
        let ok = (0..n).all(|i| UdpSocket::bind(SocketAddr::new(ip, base + i)).is_ok());
        if ok {
            let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
            let set = guard.get_or_insert_with(HashSet::new);
            for i in 0..n {
                set.insert(base + i);
            }
            return base;
        }
    }
    panic!("no free range of {n} UDP ports");
}
