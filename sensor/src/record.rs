//! Decoding ring buffer records into [`RawEvent`]: sizes are checked before
//! anything is read, and a malformed record is an error, never a panic. The
//! wire structs are `bytemuck::Pod` (derived in `sensor-common`): they are
//! read from and written to bytes without `unsafe`.

use bytemuck::{AnyBitPattern, NoUninit};
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

/// The plain-old-data value at `at`, or `None` when `bytes` ends before it.
fn pod<T: AnyBitPattern>(bytes: &[u8], at: usize) -> Option<T> {
    let end = at.checked_add(size_of::<T>())?;
    bytes.get(at..end).map(bytemuck::pod_read_unaligned)
}

/// The payload of a `kind` record of `bytes.len()` bytes, whose length was
/// checked against `need` (the kind's fixed size).
fn payload<T: AnyBitPattern>(bytes: &[u8], kind: EventKind, need: usize) -> Result<T, DecodeError> {
    pod(bytes, HEADER_SIZE).ok_or(DecodeError::Truncated {
        kind,
        len: bytes.len(),
        need,
    })
}

/// Decodes one ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<RawEvent, DecodeError> {
    // The kind word comes first in every version: its version is checked
    // before anything else is read.
    let word: u32 = pod(bytes, 0).ok_or(DecodeError::Short { len: bytes.len() })?;
    let (version, kind) = split_kind_word(word);
    if version != WIRE_VERSION {
        return Err(DecodeError::WireVersion {
            version,
            ours: WIRE_VERSION,
        });
    }
    let mut header: EventHeader = pod(bytes, 0).ok_or(DecodeError::Short { len: bytes.len() })?;
    // Downstream sees the kind alone.
    header.kind = kind;
    let kind = EventKind::from_u32(kind).ok_or(DecodeError::UnknownKind { kind })?;
    let need = kind.fixed_size();
    let tail = bytes.get(need..).ok_or(DecodeError::Truncated {
        kind,
        len: bytes.len(),
        need,
    })?;
    Ok(match kind {
        EventKind::ProcessSpawn => {
            let data: SpawnData = payload(bytes, kind, need)?;
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
            let data: ExecData = payload(bytes, kind, need)?;
            let lens = [
                usize::from(data.exe_len),
                usize::from(data.cwd_len),
                usize::from(data.filename_len),
                data.argv_len as usize,
            ];
            let total: usize = lens.iter().sum();
            let bad = DecodeError::BadLengths {
                kind,
                need: total,
                have: tail.len(),
            };
            let mut at = 0;
            let mut next = |len: usize| {
                let s = take(tail, at, len).map(<[u8]>::to_vec);
                at += len;
                s
            };
            let (Some(exe), Some(cwd), Some(filename), Some(argv)) =
                (next(lens[0]), next(lens[1]), next(lens[2]), next(lens[3]))
            else {
                return Err(bad);
            };
            RawEvent::Exec {
                header,
                data,
                strings: ExecStrings {
                    exe,
                    cwd,
                    filename,
                    argv,
                },
                failed: kind == EventKind::ProcessExecFailed,
            }
        }
        EventKind::ProcessExit => RawEvent::Exit {
            header,
            data: payload(bytes, kind, need)?,
        },
        EventKind::NetConnect => RawEvent::Connect {
            header,
            data: payload(bytes, kind, need)?,
        },
        EventKind::NetUnix => RawEvent::Unix {
            header,
            data: Box::new(payload(bytes, kind, need)?),
        },
        EventKind::Tamper => RawEvent::Tamper {
            header,
            data: payload(bytes, kind, need)?,
        },
        EventKind::NetSocket => RawEvent::Socket {
            header,
            data: payload(bytes, kind, need)?,
        },
    })
}

fn take(bytes: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    bytes.get(at..at.checked_add(len)?)
}

/// Encodes a record the way the kernel does; used by tests and by replay tools.
#[must_use]
pub fn encode(event: &RawEvent) -> Vec<u8> {
    fn pod<T: NoUninit>(out: &mut Vec<u8>, v: &T) {
        out.extend_from_slice(bytemuck::bytes_of(v));
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
