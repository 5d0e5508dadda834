//! The DNS router: RFC 2136 dynamic updates signed with TSIG (RFC 8945), built and checked with
//! hickory-proto, sent over UDP (TCP when the answer is truncated).
//!
//! `switch` sends ONE update for the zone that deletes the name's A (AAAA for IPv6 addresses)
//! record set and adds the chosen side's address; the server applies an update message all or
//! nothing, so clients never see both addresses or none. The answer must be NOERROR and carry a valid
//! TSIG made with the same key over our request's MAC and the answer (RFC 8945 5.3), signed within
//! the fudge (300 s) of our clock; anything else is an error that says whether the record changed.
//!
//! `current` sends a plain query (no TSIG; answers are public data) with recursion off and maps the
//! addresses in the answer back to the sides.
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::{TsigAlgorithm, TsigError};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigVerifier, TSigner};

use crate::keyfile::TsigKey;
use crate::net::{io_reason, is_timeout, resolve, split_host_port, TRY_TIMEOUT};
use crate::{Route, Router, Side, SwitchContext, TrafficError};

/// How far apart our clock and the server's may be (RFC 8945 recommends 300 s).
pub(crate) const FUDGE: u16 = 300;
/// Tries over UDP before giving up (each waits [`TRY_TIMEOUT`]).
const TRIES: u32 = 2;

pub(crate) struct DnsConfig<'a> {
    pub server: &'a str,
    pub zone: &'a str,
    pub name: &'a str,
    pub ttl: u32,
    pub key_path: &'a Path,
    pub primary: &'a str,
    pub standby: &'a str,
}

pub(crate) struct DnsRouter {
    server: String,
    host: String,
    port: u16,
    zone: Name,
    fqdn: Name,
    ttl: u32,
    rtype: RecordType,
    primary: IpAddr,
    standby: IpAddr,
    key_name: String,
    signer: TSigner,
    timeout: Duration,
    tries: u32,
}

/// The hickory algorithm for a key file's algorithm name, if this router can sign with it.
pub(crate) fn algorithm(name: &str) -> Option<TsigAlgorithm> {
    match name {
        "hmac-sha256" => Some(TsigAlgorithm::HmacSha256),
        "hmac-sha384" => Some(TsigAlgorithm::HmacSha384),
        "hmac-sha512" => Some(TsigAlgorithm::HmacSha512),
        _ => None,
    }
}

/// A signer for a parsed key; `path` names the key file in errors.
pub(crate) fn signer(key: &TsigKey, path: &Path) -> Result<TSigner, TrafficError> {
    let unsupported = || TrafficError::UnsupportedAlgorithm {
        path: path.to_path_buf(),
        algorithm: key.algorithm().to_string(),
    };
    let alg = algorithm(key.algorithm()).ok_or_else(unsupported)?;
    let name = Name::from_ascii(key.name()).map_err(|_| TrafficError::KeyFile {
        path: path.to_path_buf(),
        line: 0,
        reason: "the key's name is not a DNS name".into(),
    })?;
    TSigner::new(key.secret().to_vec(), alg, name, FUDGE).map_err(|_| unsupported())
}

fn fqdn(s: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(s).map_err(|e| format!("{s:?} is not a DNS name: {e}"))?;
    n.set_fqdn(true);
    Ok(n)
}

impl DnsRouter {
    pub(crate) fn new(c: DnsConfig<'_>) -> Result<DnsRouter, TrafficError> {
        let shown = format!("dns {} at {}", c.name, c.server);
        let config = |router: &str, reason: String| TrafficError::Config {
            router: router.to_string(),
            reason,
        };
        let (host, port) = split_host_port(c.server, 53).map_err(|r| config(&shown, format!("server: {r}")))?;
        if c.zone.trim().is_empty() {
            return Err(config(&shown, "zone is empty".into()));
        }
        let zone = fqdn(c.zone.trim()).map_err(|r| config(&shown, format!("zone: {r}")))?;
        let name = c.name.trim();
        let full = if name == "@" {
            zone.clone()
        } else if name.ends_with('.') {
            fqdn(name).map_err(|r| config(&shown, format!("name: {r}")))?
        } else if name.is_empty() {
            return Err(config(&shown, "name is empty (use @ for the zone's apex)".into()));
        } else {
            Name::from_ascii(name)
                .and_then(|n| n.append_domain(&zone))
                .map_err(|e| config(&shown, format!("name: {name:?} is not a DNS name: {e}")))?
        };
        let router = format!("dns {} at {}", full, c.server);
        if !zone.zone_of(&full) {
            return Err(config(&router, format!("name {full} is not in zone {zone}")));
        }
        if c.ttl > i32::MAX as u32 {
            return Err(config(&router, format!("ttl {} is above 2147483647 (RFC 2181)", c.ttl)));
        }
        let addr = |what: &str, v: &str| {
            v.trim()
                .parse::<IpAddr>()
                .map_err(|_| config(&router, format!("{what} {v:?} is not an IPv4 or IPv6 address")))
        };
        let primary = addr("primary", c.primary)?;
        let standby = addr("standby", c.standby)?;
        if primary.is_ipv4() != standby.is_ipv4() {
            return Err(config(
                &router,
                format!(
                    "primary {primary} and standby {standby} are of different address families; one name switches \
                     between two A records or two AAAA records"
                ),
            ));
        }
        if primary == standby {
            return Err(config(
                &router,
                format!("primary and standby are the same address {primary}"),
            ));
        }
        if let Some(warning) = lifeboat_model::redact::loose_permissions(c.key_path) {
            tracing::warn!("TSIG key file {warning}");
        }
        let text = std::fs::read_to_string(c.key_path).map_err(|e| TrafficError::SecretFile {
            router: router.clone(),
            what: "TSIG key file",
            path: c.key_path.to_path_buf(),
            reason: io_reason(&e),
        })?;
        let key = TsigKey::parse(&text).map_err(|p| TrafficError::KeyFile {
            path: c.key_path.to_path_buf(),
            line: p.line,
            reason: p.reason,
        })?;
        let signer = signer(&key, c.key_path)?;
        Ok(DnsRouter {
            server: c.server.trim().to_string(),
            host,
            port,
            zone,
            fqdn: full,
            ttl: c.ttl,
            rtype: if primary.is_ipv4() {
                RecordType::A
            } else {
                RecordType::AAAA
            },
            primary,
            standby,
            key_name: key.name().to_string(),
            signer,
            timeout: TRY_TIMEOUT,
            tries: TRIES,
        })
    }

    fn address(&self, side: Side) -> IpAddr {
        match side {
            Side::Primary => self.primary,
            Side::Standby => self.standby,
        }
    }

    /// The update that points the name at `to`: zone section `ZONE SOA IN`; update section
    /// `NAME 0 ANY A` (delete the RRset) and `NAME TTL IN A ADDR` (add the record).
    pub(crate) fn update_message(&self, to: Side, id: u16) -> Message {
        update_message(&self.zone, &self.fqdn, self.ttl, self.address(to), id)
    }

    fn query_message(&self, id: u16) -> Message {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = false;
        m.add_query(Query::query(self.fqdn.clone(), self.rtype));
        m
    }

    fn err_unreachable(&self, reason: String) -> TrafficError {
        TrafficError::Unreachable {
            router: self.describe(),
            server: self.server.clone(),
            reason,
        }
    }

    fn bad_answer(&self, reason: String, change_sent: bool) -> TrafficError {
        TrafficError::BadAnswer {
            router: self.describe(),
            server: self.server.clone(),
            reason,
            change_sent,
        }
    }

    /// Sends `request` (whose id is `id`) and returns the answer: UDP, `tries` times with `timeout`
    /// each, then TCP if the answer is truncated.
    fn exchange(&self, request: &[u8], id: u16, change: bool) -> Result<Vec<u8>, TrafficError> {
        let addr = resolve(&self.host, self.port).map_err(|r| self.err_unreachable(r))?;
        let socket = UdpSocket::bind(if addr.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })
            .and_then(|s| s.connect(addr).map(|()| s))
            .map_err(|e| self.err_unreachable(io_reason(&e)))?;
        let mut buf = vec![0u8; 65535];
        for attempt in 0..self.tries {
            match socket.send(request) {
                Ok(_) => {}
                // An earlier try may have been applied: the outcome is not known.
                Err(_) if attempt > 0 && change => return Err(self.timeout_error(attempt, change)),
                Err(e) => return Err(self.err_unreachable(io_reason(&e))),
            }
            let deadline = Instant::now() + self.timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                socket
                    .set_read_timeout(Some(left))
                    .map_err(|e| self.err_unreachable(io_reason(&e)))?;
                match socket.recv(&mut buf) {
                    Ok(n) => {
                        let answer = &buf[..n];
                        // Anything that is not the answer to this request (a late answer to an earlier
                        // try has the same id and is as good) is ignored.
                        if n < 12 || u16::from_be_bytes([answer[0], answer[1]]) != id || answer[2] & 0x80 == 0 {
                            continue;
                        }
                        if answer[2] & 0x02 != 0 {
                            return self.exchange_tcp(addr, request, id, change);
                        }
                        return Ok(answer.to_vec());
                    }
                    Err(e) if is_timeout(&e) => break,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && !(attempt > 0 && change) => {
                        return Err(self.err_unreachable(io_reason(&e)));
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => break,
                    Err(e) => return Err(self.err_unreachable(io_reason(&e))),
                }
            }
        }
        Err(self.timeout_error(self.tries, change))
    }

    fn timeout_error(&self, tries: u32, change_sent: bool) -> TrafficError {
        TrafficError::Timeout {
            router: self.describe(),
            server: self.server.clone(),
            waited: self.timeout,
            tries,
            change_sent,
        }
    }

    fn exchange_tcp(&self, addr: SocketAddr, request: &[u8], id: u16, change: bool) -> Result<Vec<u8>, TrafficError> {
        let io_err = |e: io::Error| {
            if is_timeout(&e) {
                self.timeout_error(1, change)
            } else if change {
                self.bad_answer(
                    format!("TCP exchange after a truncated answer failed: {}", io_reason(&e)),
                    true,
                )
            } else {
                self.err_unreachable(format!("{} on {addr}/tcp", io_reason(&e)))
            }
        };
        let mut s = TcpStream::connect_timeout(&addr, self.timeout).map_err(io_err)?;
        s.set_read_timeout(Some(self.timeout)).map_err(io_err)?;
        s.set_write_timeout(Some(self.timeout)).map_err(io_err)?;
        let len = u16::try_from(request.len()).map_err(|_| self.bad_answer("request too long".into(), false))?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(request);
        s.write_all(&framed).map_err(io_err)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(io_err)?;
        let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut answer).map_err(io_err)?;
        if answer.len() < 12 || u16::from_be_bytes([answer[0], answer[1]]) != id {
            return Err(self.bad_answer("the TCP answer is not the answer to the request".into(), change));
        }
        Ok(answer)
    }

    /// What the answer to a signed update means. `verifier` checks the answer's TSIG.
    pub(crate) fn check_update_answer(
        &self,
        answer: &[u8],
        verifier: Option<TSigVerifier>,
    ) -> Result<(), TrafficError> {
        let msg = Message::from_vec(answer).map_err(|e| self.bad_answer(format!("not a DNS message: {e}"), true))?;
        if msg.metadata.message_type != MessageType::Response || msg.metadata.op_code != OpCode::Update {
            return Err(self.bad_answer("the answer is not an update response".into(), true));
        }
        let tsig = msg.signature.as_ref().map(|r| &r.data);
        if let Some(err) = tsig.and_then(|t| t.error) {
            return Err(TrafficError::TsigRejected {
                router: self.describe(),
                server: self.server.clone(),
                key: self.key_name.clone(),
                code: tsig_error_name(err),
            });
        }
        let rcode = msg.metadata.response_code;
        if rcode != ResponseCode::NoError {
            return Err(TrafficError::DnsRcode {
                router: self.describe(),
                server: self.server.clone(),
                operation: "update",
                rcode: rcode_name(rcode),
            });
        }
        let unauthenticated = |reason: String| TrafficError::Unauthenticated {
            router: self.describe(),
            server: self.server.clone(),
            reason,
        };
        if tsig.is_none() {
            return Err(unauthenticated("it carries no TSIG record".into()));
        }
        let mut verifier = verifier.ok_or_else(|| unauthenticated("the request was not signed".into()))?;
        verifier
            .verify(answer)
            .map_err(|e| unauthenticated(format!("its TSIG does not verify with key {}: {e}", self.key_name)))?;
        Ok(())
    }

    /// What the answer to the query for the name means.
    pub(crate) fn route_from_answer(&self, answer: &[u8]) -> Result<Route, TrafficError> {
        let msg = Message::from_vec(answer).map_err(|e| self.bad_answer(format!("not a DNS message: {e}"), false))?;
        if msg.metadata.message_type != MessageType::Response {
            return Err(self.bad_answer("the answer is not a response".into(), false));
        }
        match msg.metadata.response_code {
            ResponseCode::NoError => {}
            ResponseCode::NXDomain => return Ok(Route::Unknown(format!("{} does not exist", self.fqdn))),
            rcode => {
                return Err(TrafficError::DnsRcode {
                    router: self.describe(),
                    server: self.server.clone(),
                    operation: "query",
                    rcode: rcode_name(rcode),
                })
            }
        }
        let mut addrs: Vec<IpAddr> = Vec::new();
        for r in &msg.answers {
            if r.name != self.fqdn {
                continue;
            }
            match &r.data {
                RData::A(A(a)) if self.rtype == RecordType::A => addrs.push(IpAddr::V4(*a)),
                RData::AAAA(AAAA(a)) if self.rtype == RecordType::AAAA => addrs.push(IpAddr::V6(*a)),
                RData::CNAME(target) => {
                    return Ok(Route::Unknown(format!(
                        "{} is an alias (CNAME) of {}",
                        self.fqdn, target.0
                    )))
                }
                _ => {}
            }
        }
        addrs.sort();
        addrs.dedup();
        let (p, s) = (self.primary, self.standby);
        Ok(match addrs.as_slice() {
            [a] if *a == p => Route::On(Side::Primary),
            [a] if *a == s => Route::On(Side::Standby),
            [] => Route::Unknown(format!("{} has no {} record", self.fqdn, self.rtype)),
            list if list.contains(&p) && list.contains(&s) && list.len() == 2 => Route::Unknown(format!(
                "{} points at both primary ({p}) and standby ({s}): traffic is split",
                self.fqdn
            )),
            list => Route::Unknown(format!(
                "{} points at {}, which is not only primary ({p}) or only standby ({s})",
                self.fqdn,
                list.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            )),
        })
    }
}

/// See [`DnsRouter::update_message`].
pub(crate) fn update_message(zone: &Name, name: &Name, ttl: u32, addr: IpAddr, id: u16) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Update);
    m.metadata.recursion_desired = false;
    // Zone section (the question section of an update).
    let mut z = Query::query(zone.clone(), RecordType::SOA);
    z.set_query_class(DNSClass::IN);
    m.add_query(z);
    let rtype = if addr.is_ipv4() {
        RecordType::A
    } else {
        RecordType::AAAA
    };
    // Update section (the authority section): delete the RRset (RFC 2136 2.5.2), then add one RR.
    let mut delete = Record::update0(name.clone(), 0, rtype);
    delete.dns_class = DNSClass::ANY;
    m.add_authority(delete);
    let data = match addr {
        IpAddr::V4(a) => RData::A(A(a)),
        IpAddr::V6(a) => RData::AAAA(AAAA(a)),
    };
    m.add_authority(Record::from_rdata(name.clone(), ttl, data));
    m
}

fn tsig_error_name(e: TsigError) -> String {
    match e {
        TsigError::BadSig => "BADSIG".into(),
        TsigError::BadKey => "BADKEY".into(),
        TsigError::BadTime => "BADTIME".into(),
        TsigError::BadTrunc => "BADTRUNC".into(),
        TsigError::Unknown(c) => format!("TSIG error {c}"),
    }
}

fn rcode_name(r: ResponseCode) -> String {
    match r {
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::YXDomain => "YXDOMAIN".into(),
        ResponseCode::YXRRSet => "YXRRSET".into(),
        ResponseCode::NXRRSet => "NXRRSET".into(),
        ResponseCode::NotAuth => "NOTAUTH".into(),
        ResponseCode::NotZone => "NOTZONE".into(),
        other => format!("rcode {}", u16::from(other)),
    }
}

fn random_id() -> u16 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 2];
    // SystemRandom only fails when the OS has no randomness at all; a time-based id still works.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let n = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .subsec_nanos();
        return n as u16;
    }
    u16::from_be_bytes(b)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl Router for DnsRouter {
    fn describe(&self) -> String {
        format!("dns {} at {}", self.fqdn, self.server)
    }

    fn current(&self) -> Result<Route, TrafficError> {
        let id = random_id();
        let request = self
            .query_message(id)
            .to_vec()
            .map_err(|e| self.bad_answer(format!("cannot encode the query: {e}"), false))?;
        let answer = self.exchange(&request, id, false)?;
        self.route_from_answer(&answer)
    }

    fn switch(&self, to: Side, _context: &SwitchContext) -> Result<(), TrafficError> {
        let id = random_id();
        let mut m = self.update_message(to, id);
        let verifier = m.finalize(&self.signer, now_secs()).map_err(|e| TrafficError::Config {
            router: self.describe(),
            reason: format!("cannot sign the update: {e}"),
        })?;
        let request = m.to_vec().map_err(|e| TrafficError::Config {
            router: self.describe(),
            reason: format!("cannot encode the update: {e}"),
        })?;
        let answer = self.exchange(&request, id, true)?;
        self.check_update_answer(&answer, verifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use hickory_proto::rr::TSigResponseContext;

    fn key_file(dir: &Path, alg: &str, secret: &[u8]) -> std::path::PathBuf {
        let p = dir.join("k.key");
        let mut f = std::fs::File::create(&p).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(secret);
        writeln!(
            f,
            "key \"lifeboat-test\" {{\n\talgorithm {alg};\n\tsecret \"{b64}\";\n}};"
        )
        .unwrap();
        p
    }

    fn router_with(
        dir: &Path,
        server: &str,
        name: &str,
        primary: &str,
        standby: &str,
    ) -> Result<DnsRouter, TrafficError> {
        let key = key_file(dir, "hmac-sha256", TEST_SECRET);
        DnsRouter::new(DnsConfig {
            server,
            zone: "lab.test.",
            name,
            ttl: 5,
            key_path: &key,
            primary,
            standby,
        })
    }

    #[test]
    fn names_relative_to_the_zone_or_absolute() {
        let d = tempfile::tempdir().unwrap();
        let r = router_with(d.path(), "127.0.0.1:5353", "app", "10.77.1.2", "10.77.2.2").unwrap();
        assert_eq!(r.describe(), "dns app.lab.test. at 127.0.0.1:5353");
        let r = router_with(d.path(), "127.0.0.1", "app.lab.test.", "10.77.1.2", "10.77.2.2").unwrap();
        assert_eq!(r.fqdn.to_string(), "app.lab.test.");
        assert_eq!(r.port, 53);
        let r = router_with(d.path(), "127.0.0.1", "@", "10.77.1.2", "10.77.2.2").unwrap();
        assert_eq!(r.fqdn.to_string(), "lab.test.");
        let r = router_with(d.path(), "[::1]:53", "v6", "fd00::1", "fd00::2").unwrap();
        assert_eq!(r.rtype, RecordType::AAAA);
    }

    #[test]
    fn bad_settings_are_config_errors() {
        let d = tempfile::tempdir().unwrap();
        for (server, name, p, s, want) in [
            (
                "127.0.0.1:5353",
                "app.other.test.",
                "10.77.1.2",
                "10.77.2.2",
                "not in zone",
            ),
            (
                "127.0.0.1:5353",
                "app",
                "10.77.1.2",
                "fd00::2",
                "different address families",
            ),
            ("127.0.0.1:5353", "app", "10.77.1.2", "10.77.1.2", "same address"),
            (
                "127.0.0.1:5353",
                "app",
                "shop-a",
                "10.77.2.2",
                "not an IPv4 or IPv6 address",
            ),
            ("127.0.0.1:port", "app", "10.77.1.2", "10.77.2.2", "server:"),
            ("127.0.0.1:5353", "", "10.77.1.2", "10.77.2.2", "name is empty"),
        ] {
            match router_with(d.path(), server, name, p, s) {
                Err(TrafficError::Config { reason, .. }) => assert!(reason.contains(want), "{reason}"),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("{server} {name} {p} {s} accepted"),
            }
        }
    }

    #[test]
    fn unsupported_and_unknown_algorithms() {
        let d = tempfile::tempdir().unwrap();
        for alg in ["hmac-sha1", "hmac-md5", "hmac-foo"] {
            let key = key_file(d.path(), alg, b"secret-bytes");
            let e = DnsRouter::new(DnsConfig {
                server: "127.0.0.1:5353",
                zone: "lab.test.",
                name: "app",
                ttl: 5,
                key_path: &key,
                primary: "10.77.1.2",
                standby: "10.77.2.2",
            })
            .err()
            .unwrap();
            assert!(
                matches!(&e, TrafficError::UnsupportedAlgorithm { algorithm, .. } if algorithm == alg),
                "{e}"
            );
        }
        for alg in ["hmac-sha256", "hmac-sha384", "hmac-sha512"] {
            let key = key_file(d.path(), alg, b"secret-bytes");
            assert!(DnsRouter::new(DnsConfig {
                server: "127.0.0.1:5353",
                zone: "lab.test.",
                name: "app",
                ttl: 5,
                key_path: &key,
                primary: "10.77.1.2",
                standby: "10.77.2.2",
            })
            .is_ok());
        }
    }

    #[test]
    fn missing_and_malformed_key_files() {
        let d = tempfile::tempdir().unwrap();
        let cfg = |key: &Path| {
            DnsRouter::new(DnsConfig {
                server: "127.0.0.1:5353",
                zone: "lab.test.",
                name: "app",
                ttl: 5,
                key_path: key,
                primary: "10.77.1.2",
                standby: "10.77.2.2",
            })
        };
        let missing = d.path().join("nope.key");
        assert!(matches!(cfg(&missing), Err(TrafficError::SecretFile { .. })));
        let bad = d.path().join("bad.key");
        std::fs::write(
            &bad,
            "key \"k\" {\n algorithm hmac-sha256;\n secret \"c2VjcmV0LXNlY3JldA==\"\n};\n",
        )
        .unwrap();
        let e = cfg(&bad).err().unwrap();
        assert!(matches!(&e, TrafficError::KeyFile { line: 4, .. }), "{e}");
        assert!(!e.to_string().contains("c2VjcmV0"), "{e}");
    }

    /// The update's wire form and its TSIG MAC, for a fixed id, time and key, equal bytes derived
    /// independently from RFC 2136 and RFC 8945 (`tests/tsig_vector.py`, Python's hmac module).
    #[test]
    fn update_message_and_mac_match_an_independent_derivation() {
        let zone = fqdn("lab.test.").unwrap();
        let name = fqdn("app.lab.test.").unwrap();
        let mut m = update_message(&zone, &name, 5, "10.77.2.2".parse().unwrap(), 0x1234);
        let unsigned = m.to_vec().unwrap();
        assert_eq!(hex::encode(&unsigned), UNSIGNED_HEX);
        let key = TsigKey::new(
            "lifeboat-test",
            "hmac-sha256",
            b"0123456789abcdef0123456789abcdef".to_vec(),
        );
        let s = signer(&key, Path::new("k")).unwrap();
        m.finalize(&s, 1_700_000_000).unwrap();
        let sig = m.signature.as_ref().unwrap();
        assert_eq!(hex::encode(&sig.data.mac), MAC_HEX);
        // And the signed message as a whole (the TSIG record appended, ARCOUNT 1).
        assert_eq!(hex::encode(m.to_vec().unwrap()), SIGNED_HEX);
    }

    const TEST_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// A DNS server on 127.0.0.1 that answers one request with `answer(request)`.
    fn fake_server(answer: impl Fn(&Message, &[u8]) -> Vec<u8> + Send + 'static) -> String {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65535];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let req = Message::from_vec(&buf[..n]).unwrap();
                let _ = sock.send_to(&answer(&req, &buf[..n]), from);
            }
        });
        addr
    }

    fn test_router(server: &str) -> (tempfile::TempDir, DnsRouter) {
        let d = tempfile::tempdir().unwrap();
        let r = router_with(d.path(), server, "app", "10.77.1.2", "10.77.2.2").unwrap();
        (d, r)
    }

    /// An update response, signed by `key` (a server's signature over the request's MAC).
    fn signed_response(req: &Message, rcode: ResponseCode, key: Option<&[u8]>) -> Vec<u8> {
        let mut resp = Message::response(req.metadata.id, OpCode::Update);
        resp.metadata.response_code = rcode;
        resp.add_queries(req.queries.clone());
        if let Some(key) = key {
            let s = signer(
                &TsigKey::new("lifeboat-test", "hmac-sha256", key.to_vec()),
                Path::new("k"),
            )
            .unwrap();
            let request_mac = req.signature.as_ref().unwrap().data.mac.clone();
            let unsigned = resp.to_vec().unwrap();
            let ctx = TSigResponseContext::new(req.metadata.id, now_secs(), s, request_mac, None);
            resp.set_signature(ctx.sign(&unsigned).unwrap());
        }
        resp.to_vec().unwrap()
    }

    #[test]
    fn a_correctly_signed_answer_is_accepted() {
        let server = fake_server(|req, _| signed_response(req, ResponseCode::NoError, Some(TEST_SECRET)));
        let (_d, r) = test_router(&server);
        r.switch(Side::Standby, &SwitchContext::default()).unwrap();
    }

    #[test]
    fn unsigned_or_forged_answers_are_not_trusted() {
        let server = fake_server(|req, _| signed_response(req, ResponseCode::NoError, None));
        let (_d, r) = test_router(&server);
        let e = r.switch(Side::Standby, &SwitchContext::default()).unwrap_err();
        assert!(
            matches!(&e, TrafficError::Unauthenticated { reason, .. } if reason.contains("no TSIG")),
            "{e}"
        );
        assert_eq!(e.traffic_after(), crate::TrafficAfter::Unknown);

        let server = fake_server(|req, _| signed_response(req, ResponseCode::NoError, Some(b"another key")));
        let (_d, r) = test_router(&server);
        let e = r.switch(Side::Standby, &SwitchContext::default()).unwrap_err();
        assert!(matches!(&e, TrafficError::Unauthenticated { .. }), "{e}");
    }

    #[test]
    fn error_rcodes_say_the_record_is_unchanged() {
        let server = fake_server(|req, _| signed_response(req, ResponseCode::Refused, None));
        let (_d, r) = test_router(&server);
        let e = r.switch(Side::Standby, &SwitchContext::default()).unwrap_err();
        assert!(
            matches!(&e, TrafficError::DnsRcode { rcode, operation: "update", .. } if rcode == "REFUSED"),
            "{e}"
        );
        assert!(e.to_string().contains("the record is unchanged"), "{e}");
        assert!(!e.retry_may_help());
        let server = fake_server(|req, _| signed_response(req, ResponseCode::ServFail, Some(TEST_SECRET)));
        let (_d, r) = test_router(&server);
        assert!(r
            .switch(Side::Standby, &SwitchContext::default())
            .unwrap_err()
            .retry_may_help());
    }

    #[test]
    fn answers_to_other_requests_and_garbage_are_ignored() {
        // First garbage and an answer with another id, then the real answer.
        let server = {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = sock.local_addr().unwrap().to_string();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65535];
                let (n, from) = sock.recv_from(&mut buf).unwrap();
                let req = Message::from_vec(&buf[..n]).unwrap();
                sock.send_to(b"garbage", from).unwrap();
                let mut other = Message::response(req.metadata.id.wrapping_add(1), OpCode::Query);
                other.add_answer(Record::from_rdata(
                    req.queries[0].name().clone(),
                    5,
                    RData::A(A([10, 0, 0, 9].into())),
                ));
                sock.send_to(&other.to_vec().unwrap(), from).unwrap();
                let mut resp = Message::response(req.metadata.id, OpCode::Query);
                resp.add_answer(Record::from_rdata(
                    req.queries[0].name().clone(),
                    5,
                    RData::A(A([10, 77, 2, 2].into())),
                ));
                sock.send_to(&resp.to_vec().unwrap(), from).unwrap();
            });
            addr
        };
        let (_d, r) = test_router(&server);
        assert_eq!(r.current().unwrap(), Route::On(Side::Standby));
    }

    #[test]
    fn truncated_answers_are_fetched_over_tcp() {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        let tcp = std::net::TcpListener::bind(addr).unwrap();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65535];
            let (n, from) = udp.recv_from(&mut buf).unwrap();
            let req = Message::from_vec(&buf[..n]).unwrap();
            let mut tc = Message::response(req.metadata.id, OpCode::Query);
            tc.metadata.truncation = true;
            udp.send_to(&tc.to_vec().unwrap(), from).unwrap();
            let (mut conn, _) = tcp.accept().unwrap();
            let mut len = [0u8; 2];
            conn.read_exact(&mut len).unwrap();
            let mut req = vec![0u8; u16::from_be_bytes(len) as usize];
            conn.read_exact(&mut req).unwrap();
            let req = Message::from_vec(&req).unwrap();
            let mut resp = Message::response(req.metadata.id, OpCode::Query);
            for a in [[10, 77, 1, 2], [10, 77, 2, 2]] {
                resp.add_answer(Record::from_rdata(
                    req.queries[0].name().clone(),
                    5,
                    RData::A(A(a.into())),
                ));
            }
            let bytes = resp.to_vec().unwrap();
            conn.write_all(&(bytes.len() as u16).to_be_bytes()).unwrap();
            conn.write_all(&bytes).unwrap();
        });
        let (_d, r) = test_router(&addr.to_string());
        assert!(matches!(r.current().unwrap(), Route::Unknown(why) if why.contains("split")));
    }

    #[test]
    fn routes_from_answers() {
        let (_d, r) = test_router("127.0.0.1:53");
        let answer = |addrs: &[[u8; 4]], rcode: ResponseCode| {
            let mut m = Message::response(7, OpCode::Query);
            m.metadata.response_code = rcode;
            for a in addrs {
                m.add_answer(Record::from_rdata(r.fqdn.clone(), 5, RData::A(A((*a).into()))));
            }
            m.to_vec().unwrap()
        };
        let route = |addrs: &[[u8; 4]]| r.route_from_answer(&answer(addrs, ResponseCode::NoError)).unwrap();
        assert_eq!(route(&[[10, 77, 1, 2]]), Route::On(Side::Primary));
        assert_eq!(route(&[[10, 77, 2, 2]]), Route::On(Side::Standby));
        assert!(matches!(route(&[]), Route::Unknown(w) if w.contains("no A record")));
        assert!(matches!(route(&[[10, 0, 0, 9]]), Route::Unknown(w) if w.contains("10.0.0.9")));
        assert!(matches!(route(&[[10, 77, 1, 2], [10, 0, 0, 9]]), Route::Unknown(_)));
        assert!(matches!(
            r.route_from_answer(&answer(&[], ResponseCode::NXDomain)).unwrap(),
            Route::Unknown(w) if w.contains("does not exist")
        ));
        assert!(matches!(
            r.route_from_answer(&answer(&[], ResponseCode::Refused)),
            Err(TrafficError::DnsRcode { operation: "query", .. })
        ));
        assert!(matches!(
            r.route_from_answer(b"\x00\x07"),
            Err(TrafficError::BadAnswer { .. })
        ));
    }

    // Produced by crates/traffic/tests/tsig_vector.py (see there).
    const UNSIGNED_HEX: &str =
        "123428000001000000020000036c61620474657374000006000103617070c00c000100ff000000000000c01a000100010000000500040a4d0202";
    const MAC_HEX: &str = "3faa95b1a433803a0ff9dffde9a5b323fe6966291c235250d5c528b3894c13b0";
    const SIGNED_HEX: &str =
        "123428000001000000020001036c61620474657374000006000103617070c00c000100ff000000000000c01a000100010000000500040a4d02020d6c696665626f61742d746573740000fa00ff00000000003d0b686d61632d7368613235360000006553f100012c00203faa95b1a433803a0ff9dffde9a5b323fe6966291c235250d5c528b3894c13b0123400000000";
}
