//! Network Activity (4001): connects, datagrams, listeners, accepted
//! connections and sockets, with their endpoints.

use super::{Draft, errno_text, opt_text, process::acting, text};
use crate::{
    event::{Kind, NetResult, Network, Process},
    sinks::format::ocsf::{
        classes::{Class, NetShape, Status, protocol_num, protocol_ver},
        objects::{ConnectionInfo, Endpoint, Traffic},
    },
};

/// Network Activity: a connect (IP or Unix), unconnected datagrams, a
/// listener, an accepted connection, or a raw/ICMP/packet socket.
pub(super) fn network_activity<'a>(
    kind: Kind,
    n: &'a Network,
    p: Option<&'a Process>,
) -> Draft<'a> {
    let shape = NetShape::of(kind, n);
    let (activity_id, activity_name, status) = match (shape, n.result) {
        (NetShape::Listen, _) => (7, "Listen", Status::Success),
        (NetShape::Traffic, _) => (6, "Traffic", Status::Unknown),
        (_, NetResult::Ok) => (1, "Open", Status::Success),
        (_, NetResult::Refused) => (5, "Refuse", Status::Failure),
        (_, NetResult::Error) => (4, "Fail", Status::Failure),
        // Connected, to a socket other than the allowed one: the caller
        // was killed before it could use the connection.
        (_, NetResult::Killed) => (1, "Open", Status::Failure),
        (_, NetResult::InProgress | NetResult::Unknown) => (1, "Open", Status::Unknown),
    };
    let mut m = Draft::new(Class::Network, activity_id, activity_name);
    m.status = Some(status);
    m.network = Some((n, shape));
    let what = match shape {
        NetShape::Socket => "socket",
        _ => "connect",
    };
    m.status_detail = match n.result {
        NetResult::Ok => None,
        _ if shape == NetShape::Traffic => {
            let sends = n.sends.unwrap_or(0);
            let plural = if sends == 1 { "" } else { "s" };
            Some(
                format!(
                    "{sends} datagram{plural} sent to this destination without connect() so far"
                )
                .into(),
            )
        }
        NetResult::InProgress => Some("connect in progress (EINPROGRESS)".into()),
        NetResult::Unknown => Some(format!("{what} result not observed").into()),
        NetResult::Killed => Some(match opt_text(n.peer_path.as_ref()) {
            Some(peer) => format!(
                "connected to {peer}, not the socket the allowed address names: the caller \
                 was killed"
            )
            .into(),
            None => "connected to another socket than the allowed address names: the caller \
                     was killed"
                .into(),
        }),
        NetResult::Refused | NetResult::Error => {
            let error = opt_text(n.error.as_ref());
            m.status_code = error;
            errno_text(error, n.errno).map(|e| format!("{what} failed: {e}").into())
        }
    };
    m.actor_process = acting(p);
    m
}

pub(super) type NetworkObjects<'a> = (
    Option<Endpoint<'a>>,
    Option<Endpoint<'a>>,
    Option<Traffic>,
    Option<ConnectionInfo<'a>>,
);

/// (`src_endpoint`, `dst_endpoint`, `traffic`, `connection_info`) of a
/// network event on host `host`.
pub(super) fn network_objects<'a>(
    n: &'a Network,
    shape: NetShape,
    host: &'a str,
) -> NetworkObjects<'a> {
    let ip_end = |ip: Option<std::net::IpAddr>, port: Option<u16>| {
        ip.map(|ip| Endpoint {
            ip: Some(ip),
            port,
            ..Endpoint::default()
        })
    };
    let (mut src, dst) = match shape {
        NetShape::Connect | NetShape::Traffic => (None, ip_end(n.dst_ip, n.dst_port)),
        // A socket path (or @name) has no OCSF attribute of its own: the
        // endpoint's name.
        NetShape::Unix => (
            None,
            opt_text(n.path.as_ref()).map(|path| Endpoint {
                name: Some(path),
                ..Endpoint::default()
            }),
        ),
        NetShape::Listen => (None, ip_end(n.local_ip, n.local_port)),
        NetShape::Accept => (
            ip_end(n.src_ip, n.src_port),
            ip_end(n.local_ip, n.local_port),
        ),
        NetShape::Socket => (None, None),
    };
    if src.is_none() && dst.is_none() {
        // OCSF wants one endpoint at least: a raw socket has no peer, its
        // end is this host.
        src = Some(Endpoint {
            hostname: Some(host),
            ..Endpoint::default()
        });
    }
    let traffic = n
        .sends
        .filter(|_| shape == NetShape::Traffic)
        .map(|packets_out| Traffic { packets_out });
    let (direction_id, direction) = shape.direction();
    let transport = text(n.transport).filter(|_| shape != NetShape::Unix);
    let ver = protocol_ver(n.family);
    let info = ConnectionInfo {
        direction_id,
        direction,
        protocol_name: transport,
        protocol_num: transport.and_then(|t| protocol_num(t, n.family)),
        protocol_ver_id: ver.map(|(id, _)| id),
        protocol_ver: ver.map(|(_, caption)| caption),
    };
    (src, dst, traffic, Some(info))
}
