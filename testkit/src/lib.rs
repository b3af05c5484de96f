//! riskpipe's test support, a dev-only workspace member (`cargo install` never sees it).
//!
//! [`Broker`] starts `riskpipe-test-broker` (this crate's binary: librdkafka's mock cluster in a
//! process of its own, on a free loopback port) and sends it fault-injection commands.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

const BINARY: &str = "riskpipe-test-broker";

/// The broker binary: beside the running test or bench executable (`target/<profile>/`), where
/// `cargo test --workspace` builds it; built with cargo when missing (e.g. `cargo bench --bench
/// e2e` builds only the root package). `RISKPIPE_TEST_BROKER` overrides.
pub fn broker_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RISKPIPE_TEST_BROKER") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("the running executable's path");
    // Tests and benches run from target/<profile>/deps/.
    let dir = exe.parent().expect("the executable's directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    }
    .to_path_buf();
    let binary = profile_dir.join(BINARY);
    if !binary.is_file() {
        build(&profile_dir);
    }
    assert!(
        binary.is_file(),
        "{} is missing after building it",
        binary.display()
    );
    binary
}

/// Builds the broker into `profile_dir`'s profile with the cargo that runs us.
fn build(profile_dir: &std::path::Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "riskpipe-testkit",
        "--bin",
        BINARY,
    ]);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.args(["--profile", other]);
        }
        None => {}
    }
    if let Some(target) = profile_dir.parent() {
        cmd.env("CARGO_TARGET_DIR", target);
    }
    let status = cmd
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("running cargo to build the test broker");
    assert!(status.success(), "building {BINARY} failed: {status}");
}

/// A running `riskpipe-test-broker` (librdkafka mock cluster on a free loopback port).
#[derive(Debug)]
pub struct Broker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// `bootstrap.servers` of the broker.
    pub bootstrap: String,
}

impl Broker {
    /// Starts the broker with `topics` (name, partitions) created.
    pub fn start(topics: &[(&str, i32)]) -> Broker {
        let mut cmd = Command::new(broker_binary());
        for (t, p) in topics {
            cmd.arg("--topic").arg(format!("{t}:{p}"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the test broker must start");
        let stdin = child.stdin.take().expect("piped stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("broker prints its address");
        let bootstrap = line
            .trim()
            .strip_prefix("BOOTSTRAP=")
            .unwrap_or_else(|| panic!("unexpected broker greeting {line:?}"))
            .to_string();
        for server in bootstrap.split(',') {
            let addr: std::net::SocketAddr = server
                .parse()
                .unwrap_or_else(|e| panic!("bootstrap {server:?} is not host:port: {e}"));
            assert!(addr.ip().is_loopback(), "{bootstrap} is not on loopback");
            assert_ne!(addr.port(), 0, "{bootstrap}");
        }
        Broker {
            child,
            stdin,
            stdout,
            bootstrap,
        }
    }

    /// Sends a command; returns the broker's answer (`ok` or `error: …`).
    pub fn try_command(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("broker stdin");
        self.stdin.flush().expect("broker stdin");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("broker reply");
        line.trim().to_string()
    }

    /// Sends a fault-injection command; panics unless the broker answers `ok`.
    pub fn command(&mut self, cmd: &str) {
        let answer = self.try_command(cmd);
        assert_eq!(answer, "ok", "broker command {cmd:?}");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
