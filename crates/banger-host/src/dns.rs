//! banger's DNS: `<name>.vm` A records for live VMs, served on the bridge
//! address so guests (and the host) can reach each other by name.
//!
//! Authoritative for `vm.` only, no recursion: anything else is REFUSED
//! and an unknown name under `vm.` is NXDOMAIN. The record set is replaced
//! wholesale on every VM transition, so it never names a dead VM. Message
//! encoding is hickory's; the server is a plain UDP loop.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

/// TTL of answers: short, VMs come and go.
const TTL: u32 = 5;

/// The record set of live VMs: VM name -> address.
pub type Records = BTreeMap<String, Ipv4Addr>;

#[cfg(any(test, feature = "testing"))]
mod fake;
#[cfg(any(test, feature = "testing"))]
pub use fake::FakeDns;

#[async_trait]
pub trait Dns: Send + Sync + std::fmt::Debug {
    /// Replaces every record; starts serving on `bind` if not yet.
    async fn publish(&self, bind: SocketAddr, records: Records);
}

/// Builds the answer to one query packet.
pub fn answer(packet: &[u8], records: &Records) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(query.metadata.id, query.metadata.op_code);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.authoritative = true;
    let mut code = ResponseCode::NoError;
    for q in &query.queries {
        resp.queries.push(q.clone());
        let name = q.name().to_lowercase().to_ascii();
        let Some(label) = name.strip_suffix(".vm.") else {
            code = ResponseCode::Refused;
            continue;
        };
        match records.get(label) {
            Some(ip) if q.query_type() == RecordType::A => {
                resp.answers
                    .push(Record::from_rdata(q.name().clone(), TTL, RData::A(A(*ip))));
            }
            // The name exists, with no record of that type: NODATA.
            Some(_) => {}
            None => code = ResponseCode::NXDomain,
        }
    }
    if query.metadata.op_code != OpCode::Query {
        code = ResponseCode::NotImp;
    }
    resp.metadata.response_code = code;
    resp.to_vec().ok()
}

/// The real server.
#[derive(Debug, Default)]
pub struct DnsServer {
    records: Arc<RwLock<Records>>,
    serving: Mutex<Option<(SocketAddr, tokio::task::JoinHandle<()>)>>,
}

impl DnsServer {
    pub fn new() -> Self {
        Self::default()
    }

    fn ensure_serving(&self, bind: SocketAddr) {
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        if serving
            .as_ref()
            .is_some_and(|(a, h)| *a == bind && !h.is_finished())
        {
            return;
        }
        // Bound synchronously so a failure is known now (the bridge address
        // may not exist yet: the next publish tries again).
        let socket = match std::net::UdpSocket::bind(bind)
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(UdpSocket::from_std)
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%bind, error = %e, "dns: cannot bind yet");
                return;
            }
        };
        let records = Arc::clone(&self.records);
        tracing::info!(%bind, "dns: serving the vm. zone");
        let task = tokio::spawn(serve(socket, records, bind));
        if let Some((_, old)) = serving.replace((bind, task)) {
            old.abort();
        }
    }
}

/// What a failed receive says about the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecvFailure {
    /// About one datagram or one peer (an ICMP error for an earlier
    /// reply, an interrupted call): the next receive may well work.
    Passing,
    /// About the socket or the interface under it: it may last.
    Lasting,
}

fn classify(e: &std::io::Error) -> RecvFailure {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | ConnectionReset | Interrupted | WouldBlock | TimedOut => {
            RecvFailure::Passing
        }
        _ => RecvFailure::Lasting,
    }
}

/// Waits between lasting receive failures, doubling up to a ceiling, and
/// says when to give up on the socket.
#[derive(Debug)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const CEILING: Duration = Duration::from_secs(1);
    /// After this many in a row the socket is dropped; the next publish
    /// binds a fresh one (see `ensure_serving`).
    const GIVE_UP_AFTER: u32 = 10;

    /// The wait before the next receive, or `None` to stop.
    fn next(&mut self) -> Option<Duration> {
        self.failures += 1;
        if self.failures >= Self::GIVE_UP_AFTER {
            return None;
        }
        Some((Self::FIRST * 2u32.saturating_pow(self.failures - 1)).min(Self::CEILING))
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Answers queries until the socket fails lastingly.
async fn serve(socket: UdpSocket, records: Arc<RwLock<Records>>, bind: SocketAddr) {
    let mut buf = vec![0u8; 1500];
    let mut backoff = Backoff { failures: 0 };
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(got) => {
                backoff.reset();
                got
            }
            Err(e) if classify(&e) == RecvFailure::Passing => continue,
            Err(e) => match backoff.next() {
                Some(wait) => {
                    tracing::debug!(%bind, error = %e, ?wait, "dns: receive failed");
                    tokio::time::sleep(wait).await;
                    continue;
                }
                None => {
                    tracing::warn!(%bind, error = %e, "dns: receive keeps failing; the next publish binds again");
                    return;
                }
            },
        };
        let reply = {
            let r = records.read().unwrap_or_else(|p| p.into_inner());
            answer(&buf[..n], &r)
        };
        if let Some(reply) = reply {
            // A reply that cannot be sent is the asker's loss only.
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some((_, h)) = self
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
    }
}

#[async_trait]
impl Dns for DnsServer {
    async fn publish(&self, bind: SocketAddr, records: Records) {
        *self.records.write().unwrap_or_else(|p| p.into_inner()) = records;
        self.ensure_serving(bind);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lasting_receive_failure_backs_off_and_then_gives_up() {
        let mut b = super::Backoff { failures: 0 };
        let waits: Vec<_> = std::iter::from_fn(|| b.next()).collect();
        assert_eq!(waits.len() as u32, super::Backoff::GIVE_UP_AFTER - 1);
        assert_eq!(waits[0], super::Backoff::FIRST);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(waits.last(), Some(&super::Backoff::CEILING));
        b.reset();
        assert_eq!(b.next(), Some(super::Backoff::FIRST));
    }

    #[test]
    fn only_errors_about_the_socket_count_as_lasting() {
        use super::{RecvFailure, classify};
        use std::io::{Error, ErrorKind};
        assert_eq!(
            classify(&Error::from(ErrorKind::ConnectionRefused)),
            RecvFailure::Passing
        );
        assert_eq!(
            classify(&Error::from(ErrorKind::Interrupted)),
            RecvFailure::Passing
        );
        assert_eq!(
            classify(&Error::from_raw_os_error(nix::libc::EBADF)),
            RecvFailure::Lasting
        );
        assert_eq!(
            classify(&Error::from(ErrorKind::NetworkDown)),
            RecvFailure::Lasting
        );
    }

    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 7;
        m.metadata.recursion_desired = true;
        m.queries
            .push(Query::query(Name::from_ascii(name).expect("name"), rtype));
        m.to_vec().expect("encode")
    }

    fn records() -> Records {
        Records::from([("web".to_owned(), Ipv4Addr::new(172, 16, 0, 2))])
    }

    #[test]
    fn answers_live_names_only() {
        let r = Message::from_vec(
            &answer(&query("web.vm.", RecordType::A), &records()).expect("reply"),
        )
        .expect("decode");
        assert_eq!(r.metadata.id, 7);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert!(r.metadata.authoritative);
        assert_eq!(r.answers.len(), 1);
        assert_eq!(r.answers[0].data, RData::A(A(Ipv4Addr::new(172, 16, 0, 2))));

        let r = Message::from_vec(
            &answer(&query("WEB.VM.", RecordType::A), &records()).expect("reply"),
        )
        .expect("decode");
        assert_eq!(r.answers.len(), 1, "case-insensitive");

        let r = Message::from_vec(
            &answer(&query("gone.vm.", RecordType::A), &records()).expect("reply"),
        )
        .expect("decode");
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

        let r = Message::from_vec(
            &answer(&query("web.vm.", RecordType::AAAA), &records()).expect("reply"),
        )
        .expect("decode");
        assert_eq!(
            (r.metadata.response_code, r.answers.len()),
            (ResponseCode::NoError, 0),
            "NODATA"
        );

        let r = Message::from_vec(
            &answer(&query("example.com.", RecordType::A), &records()).expect("reply"),
        )
        .expect("decode");
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::Refused,
            "no recursion"
        );

        assert!(answer(b"garbage", &records()).is_none());
    }

    #[tokio::test]
    async fn serves_over_udp_on_loopback_and_follows_replacements() {
        let server = DnsServer::new();
        // An ephemeral loopback port: no privileges, no traffic elsewhere.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").expect("probe");
        let bind = probe.local_addr().expect("addr");
        drop(probe);
        server.publish(bind, records()).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        let ask = |name: &'static str| {
            let client = &client;
            async move {
                client
                    .send_to(&query(name, RecordType::A), bind)
                    .await
                    .expect("send");
                let mut buf = vec![0u8; 1500];
                let (n, _) = tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    client.recv_from(&mut buf),
                )
                .await
                .expect("answer in time")
                .expect("recv");
                Message::from_vec(&buf[..n]).expect("decode")
            }
        };
        assert_eq!(ask("web.vm.").await.answers.len(), 1);
        server.publish(bind, Records::new()).await;
        assert_eq!(
            ask("web.vm.").await.metadata.response_code,
            ResponseCode::NXDomain,
            "stopped VMs disappear"
        );
    }
}
