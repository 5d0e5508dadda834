//! Small network helpers shared by the routers.
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// How long one try waits for a connection or an answer.
pub(crate) const TRY_TIMEOUT: Duration = Duration::from_secs(3);

/// `HOST:PORT`, `HOST`, `[V6]:PORT`, `V6` or `[V6]` split into host and port (`default_port` when
/// none is given). Checks the syntax only; names are resolved by [`resolve`].
pub(crate) fn split_host_port(s: &str, default_port: u16) -> Result<(String, u16), String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the server address is empty".into());
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok((sa.ip().to_string(), sa.port()));
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip.to_string(), default_port));
    }
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner
            .parse::<std::net::Ipv6Addr>()
            .map(|ip| (ip.to_string(), default_port))
            .map_err(|_| format!("{s:?} is not an IPv6 address in brackets"));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{s:?}: the port {p:?} is not a number from 0 to 65535"))?,
        ),
        None => (s, default_port),
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!("{s:?} is not HOST, HOST:PORT, an IP address or IP:PORT"));
    }
    Ok((host.to_string(), port))
}

/// The first address `host:port` resolves to.
pub(crate) fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    addrs.next().ok_or_else(|| format!("{host} resolves to no address"))
}

/// Whether an I/O error means "no answer in time".
pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// A short, secret-free reason for an I/O error.
pub(crate) fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused (nothing listens there)".into(),
        io::ErrorKind::NotFound => "no such socket file".into(),
        io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        let ok = |s: &str| split_host_port(s, 53).unwrap();
        assert_eq!(ok("127.0.0.1:5353"), ("127.0.0.1".into(), 5353));
        assert_eq!(ok("10.77.0.53"), ("10.77.0.53".into(), 53));
        assert_eq!(ok("[::1]:5353"), ("::1".into(), 5353));
        assert_eq!(ok("::1"), ("::1".into(), 53));
        assert_eq!(ok("[::1]"), ("::1".into(), 53));
        assert_eq!(ok("ns1.example.test:53"), ("ns1.example.test".into(), 53));
        assert_eq!(ok("ns1"), ("ns1".into(), 53));
        for bad in ["", "host:port", "a b", "host:99999", ":53", "[zz]"] {
            assert!(split_host_port(bad, 53).is_err(), "{bad}");
        }
    }
}
