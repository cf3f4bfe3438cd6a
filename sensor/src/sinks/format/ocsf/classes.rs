//! The OCSF classes, enums and captions the sensor uses: which class, what
//! a status, a severity or a network shape is called.

use crate::event::{Kind, Network};

/// The OCSF event classes written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Base Event (0).
    Base,
    /// Process Activity (1007).
    Process,
    /// Network Activity (4001).
    Network,
    /// Application Lifecycle (6002).
    AppLifecycle,
    /// Detection Finding (2004).
    Finding,
    /// Authorize Session (3003).
    AuthorizeSession,
}

impl Class {
    /// `class_uid`.
    #[must_use]
    pub const fn uid(self) -> u32 {
        match self {
            Self::Base => 0,
            Self::Process => 1007,
            Self::Network => 4001,
            Self::AppLifecycle => 6002,
            Self::Finding => 2004,
            Self::AuthorizeSession => 3003,
        }
    }

    /// `class_name`.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Base => "Base Event",
            Self::Process => "Process Activity",
            Self::Network => "Network Activity",
            Self::AppLifecycle => "Application Lifecycle",
            Self::Finding => "Detection Finding",
            Self::AuthorizeSession => "Authorize Session",
        }
    }

    /// (`category_uid`, `category_name`).
    #[must_use]
    pub const fn category(self) -> (u32, &'static str) {
        match self {
            Self::Base => (0, "Uncategorized"),
            Self::Process => (1, "System Activity"),
            Self::Network => (4, "Network Activity"),
            Self::AppLifecycle => (6, "Application Activity"),
            Self::Finding => (2, "Findings"),
            Self::AuthorizeSession => (3, "Identity & Access Management"),
        }
    }
}

/// OCSF `status_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Unknown = 0,
    Success = 1,
    Failure = 2,
}

impl Status {
    /// `status`.
    #[must_use]
    pub const fn caption(self) -> &'static str {
        match self {
            Self::Unknown => "Unknown",
            Self::Success => "Success",
            Self::Failure => "Failure",
        }
    }
}

/// OCSF `severity_id`, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Informational = 1,
    Low = 2,
    Medium = 3,
    High = 4,
    Critical = 5,
}

impl Severity {
    /// `severity`.
    #[must_use]
    pub const fn caption(self) -> &'static str {
        match self {
            Self::Informational => "Informational",
            Self::Low => "Low",
            Self::Medium => "Medium",
            Self::High => "High",
            Self::Critical => "Critical",
        }
    }
}

/// A policy verdict as OCSF's `security_control` profile has it:
/// (`action_id`, `action`, `disposition_id`, `disposition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Allowed / Allowed.
    Allowed,
    /// A deny the kernel enforced: Denied / Blocked.
    Blocked,
    /// A deny only reported (audit): the action went ahead and would have
    /// been blocked under enforce: Allowed / Logged.
    WouldBlock,
}

impl Security {
    /// (`action_id`, `action`, `disposition_id`, `disposition`).
    #[must_use]
    pub const fn ids(self) -> (u8, &'static str, u8, &'static str) {
        match self {
            Self::Allowed => (1, "Allowed", 1, "Allowed"),
            Self::Blocked => (2, "Denied", 2, "Blocked"),
            Self::WouldBlock => (1, "Allowed", 17, "Logged"),
        }
    }
}

/// What a `network` object is about, which decides its activity, its
/// endpoints and which of its fields have an OCSF place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetShape {
    /// A connect (or a denied datagram) to an IP address.
    Connect,
    /// A connect or datagram to a Unix socket (`family: "unix"`).
    Unix,
    /// Unconnected datagrams to an IP address, with their count (`sends`).
    Traffic,
    /// `network.listen`.
    Listen,
    /// `network.accept`.
    Accept,
    /// `network.socket` (or its `policy.violation`): no endpoint.
    Socket,
}

impl NetShape {
    /// The shape of `n` in an event of kind `kind`.
    #[must_use]
    pub fn of(kind: Kind, n: &Network) -> Self {
        match kind {
            Kind::NetworkListen => Self::Listen,
            Kind::NetworkAccept => Self::Accept,
            Kind::NetworkSocket => Self::Socket,
            _ if n.family == "unix" => Self::Unix,
            _ if n.sends.is_some() => Self::Traffic,
            _ if n.dst_ip.is_none() && n.path.as_deref().is_none_or(str::is_empty) => Self::Socket,
            _ => Self::Connect,
        }
    }

    /// (`direction_id`, `direction`).
    #[must_use]
    pub const fn direction(self) -> (u8, &'static str) {
        match self {
            Self::Connect | Self::Traffic => (2, "Outbound"),
            Self::Unix => (4, "Local"),
            Self::Listen | Self::Accept => (1, "Inbound"),
            Self::Socket => (0, "Unknown"),
        }
    }
}

/// The IANA protocol number of a transport, when it has one.
#[must_use]
pub fn protocol_num(transport: &str, family: &str) -> Option<u8> {
    match (transport, family) {
        ("tcp" | "mptcp", _) => Some(6),
        ("udp", _) => Some(17),
        ("udplite", _) => Some(136),
        ("icmp", "ipv4") => Some(1),
        ("icmp", "ipv6") => Some(58),
        _ => None,
    }
}

/// (`protocol_ver_id`, `protocol_ver`) of an address family.
#[must_use]
pub fn protocol_ver(family: &str) -> Option<(u8, &'static str)> {
    match family {
        "ipv4" => Some((4, "Internet Protocol version 4 (IPv4)")),
        "ipv6" => Some((6, "Internet Protocol version 6 (IPv6)")),
        _ => None,
    }
}
