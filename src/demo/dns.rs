//! A real DNS server for tests and demos, on a free UDP port of 127.0.0.1: answers A, AAAA and SRV from a table
//! the test changes while it runs, or fails as told (silent, SERVFAIL, NXDOMAIN). Messages are built and
//! parsed with hickory-proto, the library under the proxy's resolver, but nothing of the resolver itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use parking_lot::Mutex;
use tokio::net::UdpSocket;

/// The TTL of every answer, in seconds: the proxy's floor, so a change is seen within about a second.
const TTL: u32 = 1;

/// How the server treats a name.
#[derive(Debug, Clone)]
pub enum Answer {
    /// These addresses (A and AAAA by family).
    Addresses(Vec<IpAddr>),
    /// These SRV records: (priority, weight, port, target).
    Srv(Vec<(u16, u16, u16, String)>),
    /// SERVFAIL.
    ServFail,
    /// No answer at all (the resolver times out).
    Silent,
}

/// The test's DNS server; stops when dropped.
pub struct DnsServer {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    names: Arc<Mutex<HashMap<String, Answer>>>,
    queries: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl DnsServer {
    /// Starts it with no names (every name is NXDOMAIN).
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind the test DNS server on 127.0.0.1:0");
        let addr = socket.local_addr().expect("its address");
        let names: Arc<Mutex<HashMap<String, Answer>>> = Arc::default();
        let queries = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(serve(socket, Arc::clone(&names), Arc::clone(&queries)));
        DnsServer {
            addr,
            names,
            queries,
            task,
        }
    }

    /// Sets how `name` is answered from now on.
    pub fn set(&self, name: &str, answer: Answer) {
        self.names.lock().insert(key(name), answer);
    }

    /// Makes `name` unknown (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.names.lock().remove(&key(name));
    }

    /// Queries received so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }
}

async fn serve(
    socket: UdpSocket,
    names: Arc<Mutex<HashMap<String, Answer>>>,
    queries: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Ok(request) = Message::from_vec(&buf[..len]) else {
            continue;
        };
        queries.fetch_add(1, Ordering::Relaxed);
        let Some(response) = answer(&request, &names.lock(), TTL) else {
            continue;
        };
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

/// The response to `request`, or `None` to stay silent.
fn answer(request: &Message, names: &HashMap<String, Answer>, ttl: u32) -> Option<Message> {
    let query = request.queries.first()?.clone();
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(query.clone());
    let name = query.name.clone();
    let soa = || {
        Record::from_rdata(
            Name::from_ascii("test.").expect("a name"),
            ttl,
            RData::SOA(SOA::new(
                Name::from_ascii("ns.test.").expect("a name"),
                Name::from_ascii("admin.test.").expect("a name"),
                1,
                60,
                60,
                60,
                ttl,
            )),
        )
    };
    match names.get(&key(&name.to_ascii())) {
        None => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(soa());
        }
        Some(Answer::Silent) => return None,
        Some(Answer::ServFail) => response.metadata.response_code = ResponseCode::ServFail,
        Some(Answer::Addresses(addrs)) => {
            for ip in addrs {
                let data = match (ip, query.query_type) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(*v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(name.clone(), ttl, data));
            }
            if response.answers.is_empty() {
                response.add_authority(soa());
            }
        }
        Some(Answer::Srv(records)) => {
            if query.query_type == RecordType::SRV {
                for (priority, weight, port, target) in records {
                    let target = Name::from_ascii(format!("{}.", key(target))).expect("a target");
                    let srv = SRV::new(*priority, *weight, *port, target);
                    response.add_answer(Record::from_rdata(name.clone(), ttl, RData::SRV(srv)));
                }
            } else {
                response.add_authority(soa());
            }
        }
    }
    Some(response)
}
