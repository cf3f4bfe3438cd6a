//! Real servers the output tests deliver to: rsyslogd (TCP and TLS),
//! nats-server with JetStream, and an HTTP receiver that plays Splunk HEC and
//! Elasticsearch `_bulk`.
//!
//! Every server runs on its own loopback port, keeps its files in its own
//! [`TempDir`], is killed when dropped, and can be killed with SIGKILL
//! (`kill9`) and started again on the same port and data (`restart`). A
//! server that does not come up is an error naming its log. The server
//! processes get `PR_SET_PDEATHSIG(SIGKILL)`, like the daemon, so none
//! outlives a crashed test.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use crate::{POLL, TempDir, run_child, text};

/// How long a server may take to listen after it was started.
pub const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The canonical loopback address every server listens on.
pub const LOOPBACK: &str = "127.0.0.1";

// ----- processes -----

/// A server process: its child, its log file (stdout and stderr), SIGKILL on
/// drop.
struct ServerProc {
    what: &'static str,
    program: &'static str,
    child: Option<Child>,
    log: PathBuf,
}

impl ServerProc {
    fn new(what: &'static str, program: &'static str, log: PathBuf) -> Self {
        Self {
            what,
            program,
            child: None,
            log,
        }
    }

    /// Spawns `program args` with stdout and stderr appended to the log.
    fn spawn(&mut self, args: &[String]) -> Result<u32> {
        ensure!(self.child.is_none(), "{} is already running", self.what);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut cmd = Command::new(find_program(self.program)?);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // The server dies with the test thread that started it.
        crate::die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {} {args:?} ({})", self.program, self.what))?;
        let pid = child.id();
        self.child = Some(child);
        Ok(pid)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails (with the log) when the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is not running", self.what);
        };
        if let Some(status) = child.try_wait()? {
            self.child = None;
            bail!(
                "{} exited with {status}\n{}",
                self.what,
                log_tail(&self.log, 40)
            );
        }
        Ok(())
    }

    /// SIGKILL and reap.
    fn kill9(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("{} is not running", self.what);
        };
        child
            .kill()
            .with_context(|| format!("SIGKILL {}", self.what))?;
        child
            .wait()
            .with_context(|| format!("reap {}", self.what))?;
        Ok(())
    }

    /// Waits until the process listens on `LOOPBACK:port` (a listening socket
    /// of its own, so not some other process that took the port).
    fn wait_listening(&mut self, port: u16) -> Result<()> {
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        loop {
            self.check_alive()
                .with_context(|| format!("{} did not come up on port {port}", self.what))?;
            let pid = self.pid().unwrap_or(0);
            if pid_listens_on(pid, port)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} (pid {pid}) does not listen on {LOOPBACK}:{port} after {SERVER_READY_TIMEOUT:?}\n{}",
                    self.what,
                    log_tail(&self.log, 40)
                );
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        eprintln!("{}: {}", self.what, log_tail(&self.log, 15));
    }
}

/// `name` on PATH or in the sbin/bin directories (root's PATH may lack
/// /usr/sbin, where rsyslogd lives), or an error saying how to install it.
pub fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        [
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
        ]
        .into_iter()
        .map(PathBuf::from),
    );
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} is not installed (PATH {path:?}); `cargo xtask setup` installs it \
         (packages rsyslog, rsyslog-openssl, nats-server, openssl)"
    )
}

/// The last `n` lines of a log file, for failure messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    match fs::read(path) {
        Ok(b) => {
            let s = text(&b);
            let lines: Vec<&str> = s.lines().collect();
            let from = lines.len().saturating_sub(n);
            format!(
                "--- {} (last {} of {} lines) ---\n{}\n--- end ---",
                path.display(),
                lines.len() - from,
                lines.len(),
                lines[from..].join("\n")
            )
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Whether process `pid` has a TCP socket listening on 127.0.0.1:`port` or
/// on the wildcard address (from /proc/net/tcp and /proc/PID/fd).
pub fn pid_listens_on(pid: u32, port: u16) -> Result<bool> {
    let tcp = fs::read_to_string("/proc/net/tcp").context("read /proc/net/tcp")?;
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    let inodes: Vec<String> = tcp
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            (f.len() > 9 && wanted.iter().any(|w| w == f[1]) && f[3] == "0A")
                .then(|| f[9].to_owned())
        })
        .collect();
    if inodes.is_empty() {
        return Ok(false);
    }
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    let Ok(entries) = fs::read_dir(&fd_dir) else {
        return Ok(false);
    };
    for entry in entries.flatten() {
        if let Ok(target) = fs::read_link(entry.path()) {
            let t = target.to_string_lossy();
            if inodes.iter().any(|i| t == format!("socket:[{i}]")) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind((LOOPBACK, 0)).context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Polls `read` until it yields `Some`, up to `timeout`.
fn poll_for<T>(
    timeout: Duration,
    mut read: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = read()? {
            return Ok(Some(v));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL);
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

// ----- TLS material -----

/// A test CA and a server certificate for 127.0.0.1 (SAN IP:127.0.0.1 and
/// DNS:localhost), EC P-256, made with the openssl CLI.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate (PEM): what a client trusts (`ca=PATH`).
    pub ca_cert: PathBuf,
    /// The server certificate (PEM), signed by the CA.
    pub server_cert: PathBuf,
    /// The server's private key (PEM, unencrypted).
    pub server_key: PathBuf,
}

impl TestCa {
    /// Generates the CA and the server certificate into `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        let ca_key = dir.join("ca.key");
        let ca_cert = dir.join("ca.pem");
        let server_key = dir.join("server.key");
        let server_csr = dir.join("server.csr");
        let server_cert = dir.join("server.pem");
        let ext = dir.join("server.ext");
        fs::write(
            &ext,
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        let openssl = |args: &[&str]| -> Result<()> {
            let (_, out) = run_child(Command::new(find_program("openssl")?).args(args))?;
            ensure!(
                out.status.success(),
                "openssl {args:?} failed with {}: {}",
                out.status,
                text(&out.stderr)
            );
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            path_str(&ca_key)?,
            "-out",
            path_str(&ca_cert)?,
            "-days",
            "3",
            "-subj",
            "/CN=sensor-test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&args)?;
        let mut args = vec!["req", "-new"];
        args.extend(ec);
        args.extend([
            "-keyout",
            path_str(&server_key)?,
            "-out",
            path_str(&server_csr)?,
            "-subj",
            "/CN=127.0.0.1",
        ]);
        openssl(&args)?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            path_str(&server_csr)?,
            "-CA",
            path_str(&ca_cert)?,
            "-CAkey",
            path_str(&ca_key)?,
            "-set_serial",
            "2",
            "-days",
            "2",
            "-extfile",
            path_str(&ext)?,
            "-out",
            path_str(&server_cert)?,
        ])?;
        openssl(&[
            "verify",
            "-CAfile",
            path_str(&ca_cert)?,
            path_str(&server_cert)?,
        ])?;
        Ok(Self {
            ca_cert,
            server_cert,
            server_key,
        })
    }
}

// ----- rsyslog -----

/// One message as rsyslogd parsed it (a line of its output file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogMsg {
    /// PRI (facility * 8 + severity).
    pub pri: String,
    /// "1" when rsyslog parsed the message as RFC 5424.
    pub version: String,
    /// TIMESTAMP, RFC 3339.
    pub timestamp: String,
    pub hostname: String,
    pub app_name: String,
    pub procid: String,
    pub msgid: String,
    /// STRUCTURED-DATA as sent ("-" when none).
    pub sd: String,
    /// MSG (for the sensor: one event's JSON).
    pub msg: String,
    /// The line of the output file this came from.
    pub line: String,
}

impl SyslogMsg {
    /// Parses a line of the rsyslog output file.
    pub fn parse(line: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("rsyslog output line is not JSON: {line:?}"))?;
        let field = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("rsyslog output line without {k}: {line:?}"))
        };
        Ok(Self {
            pri: field("pri")?,
            version: field("version")?,
            timestamp: field("timestamp")?,
            hostname: field("hostname")?,
            app_name: field("app_name")?,
            procid: field("procid")?,
            msgid: field("msgid")?,
            sd: field("sd")?,
            msg: field("msg")?,
            line: line.to_owned(),
        })
    }

    /// The value of `param` in the SD element `id` (e.g. `sensor@32473`,
    /// `seq`), unescaped.
    pub fn sd_param(&self, id: &str, param: &str) -> Option<String> {
        sd_elements(&self.sd)
            .into_iter()
            .find(|(i, _)| i == id)
            .and_then(|(_, params)| params.into_iter().find(|(k, _)| k == param))
            .map(|(_, v)| v)
    }

    /// MSG without a leading UTF-8 BOM (RFC 5424 allows one).
    pub fn msg_text(&self) -> &str {
        self.msg.strip_prefix('\u{feff}').unwrap_or(&self.msg)
    }
}

/// Parses RFC 5424 STRUCTURED-DATA into `(SD-ID, [(name, value)])` elements
/// ("-" is none). Values are unescaped (`\"`, `\\`, `\]`).
pub fn sd_elements(sd: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut out = Vec::new();
    let b: Vec<char> = sd.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] != '[' {
            break;
        }
        i += 1;
        let mut id = String::new();
        while i < b.len() && b[i] != ' ' && b[i] != ']' {
            id.push(b[i]);
            i += 1;
        }
        let mut params = Vec::new();
        while i < b.len() && b[i] == ' ' {
            i += 1;
            let mut name = String::new();
            while i < b.len() && b[i] != '=' {
                name.push(b[i]);
                i += 1;
            }
            // '=' '"'
            i += 2;
            let mut value = String::new();
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' && i + 1 < b.len() && matches!(b[i + 1], '"' | '\\' | ']') {
                    i += 1;
                }
                value.push(b[i]);
                i += 1;
            }
            i += 1;
            params.push((name, value));
        }
        // ']'
        i += 1;
        out.push((id, params));
    }
    out
}

/// `rsyslogd -n` with its own config: module imtcp on a loopback port
/// (octet-counted and LF framing), every message received written as one
/// JSON line `{"pri","version","timestamp","hostname","app_name","procid",
/// "msgid","sd","msg"}` to `<dir>/received.jsonl`. TLS mode uses the ossl
/// stream driver (anon auth: the server does not ask for a client cert).
pub struct Rsyslog {
    proc: ServerProc,
    port: u16,
    tls: Option<TestCa>,
    conf: PathBuf,
    pid_file: PathBuf,
    out: PathBuf,
    // Last: dropped after the process is dead.
    dir: TempDir,
}

impl Rsyslog {
    /// Plain TCP (`syslog+tcp://`).
    pub fn start_tcp() -> Result<Self> {
        Self::start(false)
    }

    /// TLS (`syslog+tls://`), with a fresh test CA ([`Rsyslog::ca_path`]).
    pub fn start_tls() -> Result<Self> {
        Self::start(true)
    }

    fn start(tls: bool) -> Result<Self> {
        let dir = TempDir::new(if tls { "rsyslog-tls" } else { "rsyslog-tcp" })?;
        let tls = if tls {
            Some(TestCa::generate(dir.path())?)
        } else {
            None
        };
        fs::create_dir_all(dir.path().join("work"))?;
        let mut me = Self {
            proc: ServerProc::new("rsyslogd", "rsyslogd", dir.path().join("rsyslogd.log")),
            port: 0,
            tls,
            conf: dir.path().join("rsyslog.conf"),
            pid_file: dir.path().join("rsyslogd.pid"),
            out: dir.path().join("received.jsonl"),
            dir,
        };
        // First start: port 0, rsyslog writes the port it got to a file.
        let port_file = me.dir.path().join("port");
        me.write_conf(0, Some(&port_file))?;
        me.spawn()?;
        let port = poll_for(SERVER_READY_TIMEOUT, || {
            me.proc.check_alive()?;
            Ok(fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
                .filter(|&p| p != 0))
        })
        .context("rsyslogd did not start")?;
        let Some(port) = port else {
            bail!(
                "rsyslogd wrote no port to {} within {SERVER_READY_TIMEOUT:?}\n{}",
                port_file.display(),
                log_tail(&me.proc.log, 40)
            );
        };
        me.port = port;
        me.proc.wait_listening(port)?;
        // A restart binds this very port.
        me.write_conf(port, None)?;
        Ok(me)
    }

    fn write_conf(&self, port: u16, port_file: Option<&Path>) -> Result<()> {
        let work = self.dir.path().join("work");
        let mut conf = format!(
            "global(workDirectory=\"{}\" maxMessageSize=\"256k\"",
            work.display()
        );
        let module = match &self.tls {
            Some(ca) => {
                conf.push_str(&format!(
                    "\n  defaultNetstreamDriver=\"ossl\"\
                     \n  defaultNetstreamDriverCAFile=\"{}\"\
                     \n  defaultNetstreamDriverCertFile=\"{}\"\
                     \n  defaultNetstreamDriverKeyFile=\"{}\"",
                    ca.ca_cert.display(),
                    ca.server_cert.display(),
                    ca.server_key.display()
                ));
                "module(load=\"imtcp\" streamDriver.name=\"ossl\" streamDriver.mode=\"1\" streamDriver.authMode=\"anon\")"
            }
            None => "module(load=\"imtcp\")",
        };
        conf.push_str(")\n");
        conf.push_str(module);
        conf.push('\n');
        conf.push_str(
            r#"template(name="sensorTestLine" type="list" option.jsonf="on") {
  property(outname="pri" name="pri" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}
"#,
        );
        conf.push_str(&format!(
            "ruleset(name=\"sensorTestIn\") {{\n  action(type=\"omfile\" file=\"{}\" template=\"sensorTestLine\")\n}}\n",
            self.out.display()
        ));
        let port_file = port_file
            .map(|p| format!(" listenPortFileName=\"{}\"", p.display()))
            .unwrap_or_default();
        conf.push_str(&format!(
            "input(type=\"imtcp\" address=\"{LOOPBACK}\" port=\"{port}\"{port_file} ruleset=\"sensorTestIn\")\n"
        ));
        fs::write(&self.conf, conf).with_context(|| format!("write {}", self.conf.display()))
    }

    fn spawn(&mut self) -> Result<()> {
        let _ = fs::remove_file(&self.pid_file);
        let args = vec![
            "-n".to_owned(),
            "-f".to_owned(),
            path_str(&self.conf)?.to_owned(),
            "-i".to_owned(),
            path_str(&self.pid_file)?.to_owned(),
        ];
        self.proc.spawn(&args)?;
        Ok(())
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The rsyslogd process while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("{LOOPBACK}:{}", self.port)
    }

    /// The test CA's certificate (PEM) for `ca=PATH`; `None` for plain TCP.
    pub fn ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|c| c.ca_cert.as_path())
    }

    /// Its temp dir (config, log, output file, TLS files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file every received message is written to.
    pub fn output_path(&self) -> &Path {
        &self.out
    }

    /// The lines (one per received message) written so far; a partial last
    /// line is left out.
    pub fn received(&self) -> Result<Vec<String>> {
        complete_lines(&self.out)
    }

    /// [`Rsyslog::received`], parsed.
    pub fn messages(&self) -> Result<Vec<SyslogMsg>> {
        self.received()?
            .iter()
            .map(|l| SyslogMsg::parse(l))
            .collect()
    }

    /// Waits until at least `n` lines were received and returns them all.
    pub fn wait_for_lines(&mut self, n: usize, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines = self.received()?;
            if lines.len() >= n {
                return Ok(lines);
            }
            self.proc.check_alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "rsyslogd received {} lines within {timeout:?}, want {n}\n{}",
                    lines.len(),
                    log_tail(&self.proc.log, 40)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Its log (stdout and stderr), last lines.
    pub fn log(&self) -> String {
        log_tail(&self.proc.log, 40)
    }

    /// Fails (with the log) if rsyslogd has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        self.proc.check_alive()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) -> Result<()> {
        self.proc.kill9()
    }

    /// Starts it again on the same port, config and output file (killing it
    /// first when it runs), and waits until it listens.
    pub fn restart(&mut self) -> Result<()> {
        if self.proc.child.is_some() {
            self.proc.kill9()?;
        }
        self.spawn()?;
        self.proc.wait_listening(self.port)
    }
}

/// Complete lines of a file (none when it does not exist yet).
pub fn complete_lines(path: &Path) -> Result<Vec<String>> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Ok(text(&bytes[..end])
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect())
}

// ----- NATS -----

/// One JetStream message as a consumer read it.
#[derive(Debug, Clone)]
pub struct NatsMsg {
    /// Its sequence in the stream.
    pub stream_seq: u64,
    pub subject: String,
    /// Every header value (a name may repeat).
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl NatsMsg {
    /// The first value of header `name` (case-sensitive, as NATS is).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `nats-server -js -sd <dir>/js -a 127.0.0.1 -p PORT`.
pub struct Nats {
    proc: ServerProc,
    port: u16,
    store: PathBuf,
    dir: TempDir,
}

fn rt() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build a tokio runtime")
}

/// How long one NATS client call may take.
const NATS_CALL_TIMEOUT: Duration = Duration::from_secs(20);

impl Nats {
    /// Starts it on a port of its choosing (`-p -1`, read back from its
    /// ports file) and waits until it listens.
    pub fn start() -> Result<Self> {
        let dir = TempDir::new("nats")?;
        let store = dir.path().join("js");
        let mut me = Self {
            proc: ServerProc::new("nats-server", "nats-server", dir.path().join("nats.log")),
            port: 0,
            store,
            dir,
        };
        let ports_dir = me.dir.path().join("ports");
        fs::create_dir_all(&ports_dir)?;
        let mut args = me.args("-1")?;
        args.extend([
            "--ports_file_dir".to_owned(),
            path_str(&ports_dir)?.to_owned(),
        ]);
        let pid = me.proc.spawn(&args)?;
        let ports_file = ports_dir.join(format!("nats-server_{pid}.ports"));
        let port = poll_for(SERVER_READY_TIMEOUT, || {
            me.proc.check_alive()?;
            let Ok(s) = fs::read_to_string(&ports_file) else {
                return Ok(None);
            };
            let Ok(v) = serde_json::from_str::<Value>(&s) else {
                return Ok(None);
            };
            Ok(v.pointer("/nats/0")
                .and_then(Value::as_str)
                .and_then(|u| u.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok()))
        })
        .context("nats-server did not start")?;
        let Some(port) = port else {
            bail!(
                "nats-server wrote no ports file {} within {SERVER_READY_TIMEOUT:?}\n{}",
                ports_file.display(),
                log_tail(&me.proc.log, 40)
            );
        };
        me.port = port;
        me.proc.wait_listening(port)?;
        Ok(me)
    }

    fn args(&self, port: &str) -> Result<Vec<String>> {
        Ok(vec![
            "-js".to_owned(),
            "-sd".to_owned(),
            path_str(&self.store)?.to_owned(),
            "-a".to_owned(),
            LOOPBACK.to_owned(),
            "-p".to_owned(),
            port.to_owned(),
        ])
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The nats-server process while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{LOOPBACK}:{}", self.port)
    }

    /// Its temp dir (JetStream store, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log, last lines.
    pub fn log(&self) -> String {
        log_tail(&self.proc.log, 40)
    }

    /// SIGKILL (the JetStream store stays).
    pub fn kill9(&mut self) -> Result<()> {
        self.proc.kill9()
    }

    /// Starts it again on the same port and store (killing it first when it
    /// runs), and waits until it listens.
    pub fn restart(&mut self) -> Result<()> {
        if self.proc.child.is_some() {
            self.proc.kill9()?;
        }
        let args = self.args(&self.port.to_string())?;
        self.proc.spawn(&args)?;
        self.proc.wait_listening(self.port)
    }

    /// Runs `f` with a JetStream context on a current-thread runtime, within
    /// [`NATS_CALL_TIMEOUT`].
    fn with_js<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(async_nats::jetstream::Context) -> Result<T>,
    ) -> Result<T> {
        let url = self.url();
        let r = rt()?.block_on(async {
            let work = async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(Duration::from_secs(5))
                    .connect(url.as_str())
                    .await
                    .with_context(|| format!("connect to {url}"))?;
                let js = async_nats::jetstream::new(client.clone());
                let r = f(js).await;
                let _ = client.drain().await;
                r
            };
            tokio::time::timeout(NATS_CALL_TIMEOUT, work)
                .await
                .map_err(|_| anyhow!("timed out after {NATS_CALL_TIMEOUT:?}"))?
        });
        r.with_context(|| format!("NATS {what} on {}\n{}", self.url(), self.log()))
    }

    /// Creates a file-backed stream `name` on `subject` (2 minute duplicate
    /// window, the default).
    pub fn create_stream(&self, name: &str, subject: &str) -> Result<()> {
        let (name, subject) = (name.to_owned(), subject.to_owned());
        self.with_js("create_stream", async move |js| {
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![subject],
                storage: async_nats::jetstream::stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("create stream {name}: {e}"))?;
            Ok(())
        })
    }

    /// Publishes one message through JetStream (with header `Nats-Msg-Id`
    /// when `msg_id` is given) and returns `(stream seq, duplicate)` from the
    /// ack. For checking the harness itself.
    pub fn publish(
        &self,
        subject: &str,
        msg_id: Option<&str>,
        payload: &[u8],
    ) -> Result<(u64, bool)> {
        let (subject, msg_id, payload) = (
            subject.to_owned(),
            msg_id.map(str::to_owned),
            payload.to_vec(),
        );
        self.with_js("publish", async move |js| {
            let mut headers = async_nats::HeaderMap::new();
            if let Some(id) = msg_id {
                headers.insert("Nats-Msg-Id", id.as_str());
            }
            let ack = js
                .publish_with_headers(subject.clone(), headers, payload.into())
                .await
                .map_err(|e| anyhow!("publish to {subject}: {e}"))?
                .await
                .map_err(|e| anyhow!("ack of a publish to {subject}: {e}"))?;
            Ok((ack.sequence, ack.duplicate))
        })
    }

    /// Number of messages stored in `stream`.
    pub fn stream_len(&self, stream: &str) -> Result<u64> {
        let stream = stream.to_owned();
        self.with_js("stream info", async move |js| {
            let mut s = js
                .get_stream(&stream)
                .await
                .map_err(|e| anyhow!("get stream {stream}: {e}"))?;
            let info = s
                .info()
                .await
                .map_err(|e| anyhow!("info of stream {stream}: {e}"))?;
            Ok(info.state.messages)
        })
    }

    /// Every message of `stream`, in stream order, read with an ephemeral
    /// pull consumer (deliver all, no acks).
    pub fn read_all(&self, stream: &str) -> Result<Vec<NatsMsg>> {
        use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
        use futures_util::StreamExt;
        let stream = stream.to_owned();
        self.with_js("read_all", async move |js| {
            let mut s = js
                .get_stream(&stream)
                .await
                .map_err(|e| anyhow!("get stream {stream}: {e}"))?;
            let total = s
                .info()
                .await
                .map_err(|e| anyhow!("info of stream {stream}: {e}"))?
                .state
                .messages;
            let consumer = s
                .create_consumer(pull::Config {
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow!("create a consumer on {stream}: {e}"))?;
            let mut out: Vec<NatsMsg> = Vec::new();
            let mut idle_rounds = 0;
            while (out.len() as u64) < total {
                let want = usize::try_from(total - out.len() as u64)
                    .unwrap_or(usize::MAX)
                    .min(1000);
                let mut batch = consumer
                    .batch()
                    .max_messages(want)
                    .expires(Duration::from_secs(2))
                    .messages()
                    .await
                    .map_err(|e| anyhow!("fetch from {stream}: {e}"))?;
                let before = out.len();
                while let Some(m) = batch.next().await {
                    let m = m.map_err(|e| anyhow!("message of {stream}: {e}"))?;
                    let stream_seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                    let headers = m
                        .headers
                        .as_ref()
                        .map(|h| {
                            h.iter()
                                .flat_map(|(k, vs)| {
                                    vs.iter().map(move |v| (k.to_string(), v.to_string()))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(NatsMsg {
                        stream_seq,
                        subject: m.subject.to_string(),
                        headers,
                        payload: m.payload.to_vec(),
                    });
                }
                if out.len() == before {
                    idle_rounds += 1;
                    ensure!(
                        idle_rounds < 3,
                        "stream {stream} has {total} messages but the consumer got only {}",
                        out.len()
                    );
                }
            }
            Ok(out)
        })
    }
}

// ----- HTTP -----

/// One HTTP request the receiver got, and what it answered.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    pub method: String,
    /// The request target (path and query).
    pub path: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub raw_body: Vec<u8>,
    /// The body, gunzipped when `Content-Encoding: gzip`.
    pub body: Vec<u8>,
    /// The status the receiver answered (or was about to, when the
    /// connection died first; see `answered`).
    pub status: u16,
    /// Whether the whole answer was written to the socket.
    pub answered: bool,
    /// Which incarnation of the receiver got it (0, then +1 per restart).
    pub generation: u32,
    /// When it was received, since the receiver started.
    pub at: Duration,
}

impl HttpRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) text.
    pub fn body_text(&self) -> String {
        text(&self.body)
    }

    /// Whether the receiver answered it with a 2xx.
    pub fn ok(&self) -> bool {
        self.answered && (200..300).contains(&self.status)
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Succeed,
    Fail(u16),
    FailUntil(Instant, u16),
}

struct HttpShared {
    requests: Mutex<Vec<HttpRequest>>,
    /// Whether [`HttpRequest::raw_body`] and [`HttpRequest::body`] are kept
    /// (off for benchmarks: [`HttpReceiver::start_counting`]).
    keep_bodies: bool,
    /// Events in the requests answered 2xx (HEC objects, bulk actions).
    events: AtomicU64,
    /// Decoded body bytes of the requests answered 2xx.
    body_bytes: AtomicU64,
    mode: Mutex<Mode>,
    /// Open client connections of the current incarnation (to cut on kill).
    conns: Mutex<Vec<(u64, TcpStream)>>,
    next_conn: AtomicU64,
    stop: AtomicBool,
    generation: Mutex<u32>,
    started: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An HTTP/1.1 server on a loopback port that records every request and
/// answers like Splunk HEC (paths containing `/services/collector`:
/// `{"text":"Success","code":0}`) or Elasticsearch `_bulk` (paths ending in
/// `/_bulk`: `{"took":1,"errors":false,"items":[..]}`, one item per action),
/// or with a failure status while told to fail. Keep-alive, chunked and
/// gzip bodies are handled.
///
/// It is written on `std::net` rather than tiny_http so that
/// [`HttpReceiver::kill9`] can cut the open keep-alive connections too (as a
/// dying server would), not only the listener.
pub struct HttpReceiver {
    port: u16,
    shared: Arc<HttpShared>,
    acceptor: Option<JoinHandle<()>>,
}

impl HttpReceiver {
    /// Starts it on a free loopback port, answering 200.
    pub fn start() -> Result<Self> {
        Self::start_with(true)
    }

    /// Like [`HttpReceiver::start`], but keeps no request bodies (each
    /// recorded request has empty `raw_body` and `body`): for storms of
    /// events, counted by [`HttpReceiver::events`] and
    /// [`HttpReceiver::body_bytes`] instead.
    pub fn start_counting() -> Result<Self> {
        Self::start_with(false)
    }

    fn start_with(keep_bodies: bool) -> Result<Self> {
        let listener = TcpListener::bind((LOOPBACK, 0)).context("bind 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(HttpShared {
            requests: Mutex::new(Vec::new()),
            keep_bodies,
            events: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            mode: Mutex::new(Mode::Succeed),
            conns: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            generation: Mutex::new(0),
            started: Instant::now(),
        });
        let mut me = Self {
            port,
            shared,
            acceptor: None,
        };
        me.serve(listener);
        Ok(me)
    }

    fn serve(&mut self, listener: TcpListener) {
        self.shared.stop.store(false, Ordering::SeqCst);
        let shared = Arc::clone(&self.shared);
        self.acceptor = Some(thread::spawn(move || accept_loop(&listener, &shared)));
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT` (append the path).
    pub fn base_url(&self) -> String {
        format!("http://{LOOPBACK}:{}", self.port)
    }

    /// Answers every request with `status` (e.g. 503) until told otherwise.
    pub fn fail_with(&self, status: u16) {
        *lock(&self.shared.mode) = Mode::Fail(status);
    }

    /// Answers 503 for `d` from now, then 200 again.
    pub fn fail_for(&self, d: Duration) {
        *lock(&self.shared.mode) = Mode::FailUntil(Instant::now() + d, 503);
    }

    /// Answers 200 from now on.
    pub fn succeed(&self) {
        *lock(&self.shared.mode) = Mode::Succeed;
    }

    /// Every request so far (all incarnations), in arrival order.
    pub fn requests(&self) -> Vec<HttpRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Events in the requests it answered 2xx so far (all incarnations):
    /// HEC event objects, `_bulk` actions other than `delete`.
    pub fn events(&self) -> u64 {
        self.shared.events.load(Ordering::Relaxed)
    }

    /// Decoded (gunzipped) body bytes of the requests it answered 2xx so far.
    pub fn body_bytes(&self) -> u64 {
        self.shared.body_bytes.load(Ordering::Relaxed)
    }

    /// Whether it is listening now.
    pub fn running(&self) -> bool {
        self.acceptor.is_some()
    }

    /// Stops listening and cuts every open connection (clients get EOF on a
    /// request in flight, then connection refused), like a killed server.
    pub fn kill9(&mut self) -> Result<()> {
        let Some(acceptor) = self.acceptor.take() else {
            bail!("the HTTP receiver on port {} is not running", self.port);
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept(); it sees `stop` and drops the listener.
        let _ = TcpStream::connect((LOOPBACK, self.port));
        acceptor
            .join()
            .map_err(|_| anyhow!("the HTTP accept thread panicked"))?;
        for (_, c) in lock(&self.shared.conns).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        Ok(())
    }

    /// Listens again on the same port (retrying the bind for a few seconds),
    /// with the same mode and request log.
    pub fn restart(&mut self) -> Result<()> {
        if self.acceptor.is_some() {
            self.kill9()?;
        }
        let deadline = Instant::now() + SERVER_READY_TIMEOUT;
        let listener = loop {
            match TcpListener::bind((LOOPBACK, self.port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("rebind the HTTP receiver on {LOOPBACK}:{}", self.port)
                    });
                }
            }
        };
        *lock(&self.shared.generation) += 1;
        self.serve(listener);
        Ok(())
    }
}

impl Drop for HttpReceiver {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            let _ = self.kill9();
        }
        let reqs = lock(&self.shared.requests);
        let by_status = reqs.iter().fold(BTreeMap::new(), |mut m, r| {
            *m.entry(r.status).or_insert(0usize) += 1;
            m
        });
        eprintln!(
            "HTTP receiver on port {}: {} requests (by status {by_status:?})",
            self.port,
            reqs.len()
        );
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<HttpShared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        if let Ok(c) = conn.try_clone() {
            lock(&shared.conns).push((id, c));
        }
        let shared = Arc::clone(shared);
        thread::spawn(move || {
            let _ = serve_conn(conn, &shared);
            lock(&shared.conns).retain(|(i, _)| *i != id);
        });
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

fn read_head(r: &mut impl BufRead) -> Result<Option<Head>> {
    let mut line = String::new();
    // Skip empty lines between requests.
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        ensure!(r.read_line(&mut h)? > 0, "EOF in the request head");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    Ok(Some(Head {
        method,
        path,
        headers,
    }))
}

fn head_value<'a>(h: &'a Head, name: &str) -> Option<&'a str> {
    h.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn read_body(r: &mut impl BufRead, h: &Head) -> Result<Vec<u8>> {
    let chunked = head_value(h, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            ensure!(r.read_line(&mut size)? > 0, "EOF in a chunk size");
            let size = size.trim().split(';').next().unwrap_or_default();
            let n = usize::from_str_radix(size, 16)
                .with_context(|| format!("bad chunk size {size:?}"))?;
            if n == 0 {
                // Trailers up to the empty line.
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + n, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(len) = head_value(h, "content-length") {
        let n: usize = len
            .parse()
            .with_context(|| format!("bad Content-Length {len:?}"))?;
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok(body)
}

fn gunzip(raw: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw)
        .read_to_end(&mut out)
        .context("gunzip the request body")?;
    Ok(out)
}

/// The 2xx answer body for a request to `path` with (decoded) `body`.
fn success_body(method: &str, path: &str, body: &[u8]) -> String {
    let p = path.split('?').next().unwrap_or_default();
    if p.contains("/services/collector") {
        if p.ends_with("/health") {
            return r#"{"text":"HEC is healthy","code":17}"#.to_owned();
        }
        return r#"{"text":"Success","code":0}"#.to_owned();
    }
    if p.ends_with("/_bulk") {
        let body = text(body);
        let lines: Vec<&str> = body.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut items = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            // Only action lines are parsed: the documents are skipped.
            let line: Value = serde_json::from_str(lines[i]).unwrap_or(Value::Null);
            let action = line
                .as_object()
                .and_then(|o| o.iter().next())
                .map(|(k, v)| (k.clone(), v.clone()));
            let (op, meta) = action.unwrap_or_else(|| ("index".to_owned(), Value::Null));
            let index = meta
                .get("_index")
                .cloned()
                .unwrap_or_else(|| json!("default"));
            let status = if op == "create" { 201 } else { 200 };
            items.push(json!({ op.clone(): {
                "_index": index, "_id": format!("{}", items.len() + 1),
                "status": status, "result": "created"
            }}));
            i += if op == "delete" { 1 } else { 2 };
        }
        return json!({"took":1,"errors":false,"items":items}).to_string();
    }
    if method == "GET" && p == "/" {
        return json!({"name":"sensor-test","version":{"number":"8.11.0"},
                      "tagline":"You Know, for Search"})
        .to_string();
    }
    "{}".to_owned()
}

/// Events in a (decoded) request body to `path`: HEC event objects, or
/// `_bulk` actions other than `delete` (each followed by its document).
fn count_events(path: &str, body: &[u8]) -> u64 {
    let p = path.split('?').next().unwrap_or_default();
    if p.contains("/services/collector") {
        return count_json_objects(body);
    }
    if p.ends_with("/_bulk") {
        let body = text(body);
        let lines: Vec<&str> = body.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut events = 0;
        let mut i = 0;
        while i < lines.len() {
            let action: Value = serde_json::from_str(lines[i]).unwrap_or(Value::Null);
            if action.get("delete").is_some() {
                i += 1;
            } else {
                events += 1;
                i += 2;
            }
        }
        return events;
    }
    0
}

/// Top-level JSON objects in concatenated JSON (HEC's batch body), counted
/// by brace depth outside strings, without parsing them.
fn count_json_objects(body: &[u8]) -> u64 {
    let (mut depth, mut in_string, mut escaped, mut objects) = (0u32, false, false, 0u64);
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                if depth == 0 && b == b'}' {
                    objects += 1;
                }
            }
            _ => {}
        }
    }
    objects
}

fn failure_body(path: &str, status: u16) -> String {
    if path.contains("/services/collector") {
        r#"{"text":"Server is busy","code":9}"#.to_owned()
    } else {
        json!({"error":{"type":"unavailable","reason":"test receiver fails on purpose"},
               "status":status})
        .to_string()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn serve_conn(conn: TcpStream, shared: &HttpShared) -> Result<()> {
    let generation = *lock(&shared.generation);
    let mut writer = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        if head_value(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let raw_body = read_body(&mut reader, &head)?;
        let gz =
            head_value(&head, "content-encoding").is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        let body = if gz {
            gunzip(&raw_body).unwrap_or_else(|e| format!("<{e:#}>").into_bytes())
        } else {
            raw_body.clone()
        };
        let status = {
            let mut mode = lock(&shared.mode);
            match *mode {
                Mode::Succeed => 200,
                Mode::Fail(s) => s,
                Mode::FailUntil(until, s) => {
                    if Instant::now() < until {
                        s
                    } else {
                        *mode = Mode::Succeed;
                        200
                    }
                }
            }
        };
        let answer = if (200..300).contains(&status) {
            shared
                .events
                .fetch_add(count_events(&head.path, &body), Ordering::Relaxed);
            shared
                .body_bytes
                .fetch_add(body.len() as u64, Ordering::Relaxed);
            success_body(&head.method, &head.path, &body)
        } else {
            failure_body(&head.path, status)
        };
        let close =
            head_value(&head, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let (raw_body, body) = if shared.keep_bodies {
            (raw_body, body)
        } else {
            (Vec::new(), Vec::new())
        };
        let idx = {
            let mut reqs = lock(&shared.requests);
            reqs.push(HttpRequest {
                method: head.method.clone(),
                path: head.path.clone(),
                headers: head.headers.clone(),
                raw_body,
                body,
                status,
                answered: false,
                generation,
                at: shared.started.elapsed(),
            });
            reqs.len() - 1
        };
        if shared.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let response = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{answer}",
            reason(status),
            answer.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        writer.write_all(response.as_bytes())?;
        writer.flush()?;
        if let Some(r) = lock(&shared.requests).get_mut(idx) {
            r.answered = true;
        }
        if close {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_structured_data() {
        let sd = r#"[timeQuality tzKnown="1"][sensor@32473 seq="17" x="a\"b\]c"]"#;
        let els = sd_elements(sd);
        assert_eq!(els.len(), 2);
        assert_eq!(els[1].0, "sensor@32473");
        assert_eq!(
            els[1].1,
            vec![
                ("seq".to_owned(), "17".to_owned()),
                ("x".to_owned(), "a\"b]c".to_owned())
            ]
        );
        assert!(sd_elements("-").is_empty());
    }

    #[test]
    fn counts_events_of_hec_and_bulk_bodies() {
        let hec = br#"{"time":1,"event":{"a":"}{\"x","b":[{}]}}{"time":2,"event":{}}"#;
        assert_eq!(count_events("/services/collector/event", hec), 2);
        let bulk = b"{\"create\":{\"_index\":\"i\"}}\n{\"a\":1}\n{\"delete\":{\"_id\":\"x\"}}\n{\"index\":{}}\n{\"b\":2}\n";
        assert_eq!(count_events("/_bulk", bulk), 2);
        assert_eq!(count_events("/other", b"{}"), 0);
    }

    #[test]
    fn bulk_answer_has_one_item_per_action() -> Result<()> {
        let body = b"{\"create\":{\"_index\":\"i\"}}\n{\"a\":1}\n{\"delete\":{\"_id\":\"x\"}}\n{\"index\":{}}\n{\"b\":2}\n";
        let v: Value = serde_json::from_str(&success_body("POST", "/_bulk", body))?;
        let items = v["items"].as_array().map(Vec::len);
        assert_eq!(items, Some(3));
        assert_eq!(v["items"][0]["create"]["status"], 201);
        Ok(())
    }
}
