//! Every default on-disk path of the sensor, in one place.

/// Daemon configuration (optional).
pub const CONFIG: &str = "/etc/sensor/sensor.toml";
/// Control socket.
pub const SOCKET: &str = "/run/sensor/sensor.sock";
