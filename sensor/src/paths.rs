//! Every default on-disk path of the sensor, in one place.

/// Daemon configuration (optional).
pub const CONFIG: &str = "/etc/sensor/sensor.toml";
/// Control socket.
pub const SOCKET: &str = "/run/sensor/sensor.sock";
/// Daemon state (runs) directory.
pub const STATE_DIR: &str = "/var/lib/sensor";
/// bpffs directory of the maps that outlive the daemon.
pub const PIN_DIR: &str = "/sys/fs/bpf/sensor";
/// File of the run table, in the state directory.
pub const RUNS_FILE: &str = "runs.json";
/// Default store, in the state directory.
pub const DB: &str = "/var/lib/sensor/sensor.db";
/// What each kernel policy id stood for, in the state directory (see
/// `policy::kernel::IdNames`).
pub const POLICY_IDS_FILE: &str = "policy_ids.json";
/// What the detection's first-seen rules have seen, in the state directory
/// (see `detect::first_seen`).
pub const DETECT_SEEN_FILE: &str = "detect_seen.json";
/// File name of the store in the state directory.
pub const DB_FILE: &str = "sensor.db";
/// The reader's last-seen mark, in the state directory (see `recovery`).
pub const LAST_SEEN_FILE: &str = "last_seen.json";
/// The run-token signing keys, in the state directory (see `tokens::keys`).
pub const TOKEN_KEYS_FILE: &str = "token_keys.json";
/// The public keys that ever signed a checkpoint, in the state directory
/// (see `provenance`).
pub const PROVENANCE_KEYS_FILE: &str = "provenance_keys.json";
/// The last seq reserved, in the state directory (see `engine::sequence`).
pub const SEQ_FILE: &str = "seq";
/// The network outputs' spools (one directory each), in the state directory
/// (see `sinks::spool`).
pub const SPOOL_DIR: &str = "spool";
