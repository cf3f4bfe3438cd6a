//! Decoding ring buffer records into [`RawEvent`]: sizes are checked before
//! anything is read, and a malformed record is an error, never a panic.

use sensor_common::event::{
    ConnectData, EventHeader, EventKind, ExecData, ExitData, HEADER_SIZE, SocketData, SpawnData,
    TamperData, UnixConnectData,
};
use sensor_common::handover::{WIRE_VERSION, kind_word, split_kind_word};

/// A decoded kernel record, still in kernel terms (boot-time ns, raw bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEvent {
    Spawn {
        header: EventHeader,
        data: SpawnData,
        exe: Vec<u8>,
    },
    Exec {
        header: EventHeader,
        data: ExecData,
        strings: ExecStrings,
        failed: bool,
    },
    Exit {
        header: EventHeader,
        data: ExitData,
    },
    Connect {
        header: EventHeader,
        data: ConnectData,
    },
    /// An AF_UNIX connect (or a denied datagram to a Unix address).
    Unix {
        header: EventHeader,
        data: Box<UnixConnectData>,
    },
    /// Tamper with another process or with the sensor.
    Tamper {
        header: EventHeader,
        data: TamperData,
    },
    /// A listen, an accept, a raw-like socket, datagrams without connect().
    Socket {
        header: EventHeader,
        data: SocketData,
    },
}

/// The variable-length part of an exec record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStrings {
    pub exe: Vec<u8>,
    pub cwd: Vec<u8>,
    pub filename: Vec<u8>,
    pub argv: Vec<u8>,
}

impl RawEvent {
    #[must_use]
    pub fn header(&self) -> &EventHeader {
        match self {
            Self::Spawn { header, .. }
            | Self::Exec { header, .. }
            | Self::Exit { header, .. }
            | Self::Connect { header, .. }
            | Self::Unix { header, .. }
            | Self::Tamper { header, .. }
            | Self::Socket { header, .. } => header,
        }
    }
}

/// A record that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {len} bytes is shorter than a header")]
    Short { len: usize },
    #[error("unknown event kind {kind}")]
    UnknownKind { kind: u32 },
    /// Recorded by a build with another record layout (its programs were
    /// still attached when this daemon took over): not misread, skipped.
    #[error("record of wire version {version} (this build reads version {ours})")]
    WireVersion { version: u32, ours: u32 },
    #[error("{kind:?} record of {len} bytes, at least {need} expected")]
    Truncated {
        kind: EventKind,
        len: usize,
        need: usize,
    },
    #[error("{kind:?} record says its strings take {need} bytes, it has {have}")]
    BadLengths {
        kind: EventKind,
        need: usize,
        have: usize,
    },
}

/// Reads a plain-old-data struct at `offset`; `bytes` must be long enough (checked by callers).
fn read_pod<T: Copy>(bytes: &[u8], offset: usize) -> T {
    debug_assert!(bytes.len() >= offset + size_of::<T>());
    // SAFETY: callers checked the length; T is a repr(C) integer-only struct, any bit pattern is valid.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().add(offset).cast::<T>()) }
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    // The kind word comes first in every version: its version is checked
    // before anything else is read.
    if bytes.len() < size_of::<u32>() {
        return Err(DecodeError::Short { len: bytes.len() });
    }
    let (version, kind) = split_kind_word(read_pod(bytes, 0));
    if version != WIRE_VERSION {
        return Err(DecodeError::WireVersion {
            version,
            ours: WIRE_VERSION,
        });
    }
    if bytes.len() < HEADER_SIZE {
        return Err(DecodeError::Short { len: bytes.len() });
    }
    let mut header: EventHeader = read_pod(bytes, 0);
    // Downstream sees the kind alone.
    header.kind = kind;
    let kind = EventKind::from_u32(kind).ok_or(DecodeError::UnknownKind { kind })?;
    let need = kind.fixed_size();
    if bytes.len() < need {
        return Err(DecodeError::Truncated {
            kind,
            len: bytes.len(),
            need,
        });
    }
    let tail = &bytes[need..];
    Ok(match kind {
        EventKind::ProcessSpawn => {
            let data: SpawnData = read_pod(bytes, HEADER_SIZE);
            let exe = take(tail, 0, usize::from(data.exe_len)).ok_or(DecodeError::BadLengths {
                kind,
                need: usize::from(data.exe_len),
                have: tail.len(),
            })?;
            RawEvent::Spawn {
                header,
                data,
                exe: exe.to_vec(),
            }
        }
        EventKind::ProcessExec | EventKind::ProcessExecFailed => {
            let data: ExecData = read_pod(bytes, HEADER_SIZE);
            let lens = [
                usize::from(data.exe_len),
                usize::from(data.cwd_len),
                usize::from(data.filename_len),
                data.argv_len as usize,
            ];
            let total: usize = lens.iter().sum();
            if total > tail.len() {
                return Err(DecodeError::BadLengths {
                    kind,
                    need: total,
                    have: tail.len(),
                });
            }
            let mut at = 0;
            let mut next = |len: usize| {
                let s = tail[at..at + len].to_vec();
                at += len;
                s
            };
            let strings = ExecStrings {
                exe: next(lens[0]),
                cwd: next(lens[1]),
                filename: next(lens[2]),
                argv: next(lens[3]),
            };
            RawEvent::Exec {
                header,
                data,
                strings,
                failed: kind == EventKind::ProcessExecFailed,
            }
        }
        EventKind::ProcessExit => RawEvent::Exit {
            header,
            data: read_pod(bytes, HEADER_SIZE),
        },
        EventKind::NetConnect => RawEvent::Connect {
            header,
            data: read_pod(bytes, HEADER_SIZE),
        },
        EventKind::NetUnix => RawEvent::Unix {
            header,
            data: Box::new(read_pod(bytes, HEADER_SIZE)),
        },
        EventKind::Tamper => RawEvent::Tamper {
            header,
            data: read_pod(bytes, HEADER_SIZE),
        },
        EventKind::NetSocket => RawEvent::Socket {
            header,
            data: read_pod(bytes, HEADER_SIZE),
        },
    })
}

fn take(bytes: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    bytes.get(at..at.checked_add(len)?)
}

/// Encodes a record the way the kernel does; used by tests and by replay tools.
#[must_use]
pub fn encode(event: &RawEvent) -> Vec<u8> {
    fn pod<T: Copy>(out: &mut Vec<u8>, v: &T) {
        // SAFETY: T is a repr(C) integer-only struct without padding.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>())
        };
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::new();
    match event {
        RawEvent::Spawn { header, data, exe } => {
            pod(&mut out, header);
            pod(&mut out, data);
            out.extend_from_slice(exe);
        }
        RawEvent::Exec {
            header,
            data,
            strings,
            ..
        } => {
            pod(&mut out, header);
            pod(&mut out, data);
            for s in [&strings.exe, &strings.cwd, &strings.filename, &strings.argv] {
                out.extend_from_slice(s);
            }
        }
        RawEvent::Exit { header, data } => {
            pod(&mut out, header);
            pod(&mut out, data);
        }
        RawEvent::Connect { header, data } => {
            pod(&mut out, header);
            pod(&mut out, data);
        }
        RawEvent::Unix { header, data } => {
            pod(&mut out, header);
            pod(&mut out, &**data);
        }
        RawEvent::Tamper { header, data } => {
            pod(&mut out, header);
            pod(&mut out, data);
        }
        RawEvent::Socket { header, data } => {
            pod(&mut out, header);
            pod(&mut out, data);
        }
    }
    // The kind word carries this build's wire version, as the kernel writes it.
    if let Some(word) = out.get_mut(..4) {
        let kind = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        word.copy_from_slice(&kind_word(kind).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            tgid: 42,
            tid: 43,
            ppid: 1,
            start_ns: 5_000_000_000,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            ..EventHeader::default()
        }
    }

    #[test]
    fn exec_round_trip() {
        let strings = ExecStrings {
            exe: b"/usr/bin/curl".to_vec(),
            cwd: b"/home/alice".to_vec(),
            filename: b"curl".to_vec(),
            argv: b"curl\0-s\0\xff\0".to_vec(),
        };
        let event = RawEvent::Exec {
            header: header(EventKind::ProcessExec),
            data: ExecData {
                exe_len: 13,
                cwd_len: 11,
                filename_len: 4,
                argv_len: 10,
                argv_orig_len: 10,
                argc: 3,
                ..ExecData::default()
            },
            strings,
            failed: false,
        };
        assert_eq!(decode(&encode(&event)).unwrap(), event);
    }

    #[test]
    fn fixed_kinds_round_trip() {
        let exit = RawEvent::Exit {
            header: header(EventKind::ProcessExit),
            data: ExitData {
                exit_status: 7 << 8,
                _pad: 0,
            },
        };
        assert_eq!(decode(&encode(&exit)).unwrap(), exit);
        let connect = RawEvent::Connect {
            header: header(EventKind::NetConnect),
            data: ConnectData {
                family: 2,
                port: 443,
                addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..ConnectData::default()
            },
        };
        assert_eq!(decode(&encode(&connect)).unwrap(), connect);
    }

    #[test]
    fn malformed_records_are_errors() {
        assert_eq!(decode(&[0; 3]), Err(DecodeError::Short { len: 3 }));
        // A record of another wire version is never misread.
        assert_eq!(
            decode(&[0; 10]),
            Err(DecodeError::WireVersion {
                version: 0,
                ours: WIRE_VERSION
            })
        );
        let mut short = encode(&RawEvent::Exit {
            header: header(EventKind::ProcessExit),
            data: ExitData::default(),
        });
        short.truncate(10);
        assert_eq!(decode(&short), Err(DecodeError::Short { len: 10 }));
        let mut bad_kind = encode(&RawEvent::Exit {
            header: header(EventKind::ProcessExit),
            data: ExitData::default(),
        });
        bad_kind[0] = 99;
        assert_eq!(
            decode(&bad_kind),
            Err(DecodeError::UnknownKind { kind: 99 })
        );
        // An exec whose lengths claim more than the record holds.
        let mut lying = encode(&RawEvent::Exec {
            header: header(EventKind::ProcessExec),
            data: ExecData {
                exe_len: 4,
                ..ExecData::default()
            },
            strings: ExecStrings {
                exe: b"/bin".to_vec(),
                ..ExecStrings::default()
            },
            failed: false,
        });
        lying.truncate(lying.len() - 2);
        assert!(matches!(
            decode(&lying),
            Err(DecodeError::BadLengths { .. })
        ));
        // Truncated fixed part.
        let short = &encode(&RawEvent::Connect {
            header: header(EventKind::NetConnect),
            data: ConnectData::default(),
        })[..HEADER_SIZE + 3];
        assert!(matches!(decode(short), Err(DecodeError::Truncated { .. })));
    }
}
