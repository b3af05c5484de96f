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

/// The pinned Apache Kafka broker's jars (`testkit/kafka/pom.xml`), copied from Maven Central
/// by Maven once into `target/<profile>/apache-kafka/libs/` (made anew when the pom changes).
/// Panics with the reason when Maven or Java is missing or the download fails: a test that
/// needs the broker fails, it never skips.
pub fn apache_kafka_libs() -> PathBuf {
    let pom = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kafka/pom.xml");
    let wanted = std::fs::read_to_string(&pom).expect("testkit/kafka/pom.xml");
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe.parent().expect("the executable's directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let home = profile_dir.join("apache-kafka");
    let libs = home.join("libs");
    let marker = home.join("pom.xml");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) {
        return libs;
    }
    // Tests run side by side: one copies, the others wait for its marker.
    std::fs::create_dir_all(&home).expect("the broker's cache directory");
    let lock = home.join("copying");
    if std::fs::create_dir(&lock).is_err() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
        while std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
            assert!(
                std::time::Instant::now() < deadline && lock.exists(),
                "another test's copy of the Kafka jars did not finish"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        return libs;
    }
    let _ = std::fs::remove_dir_all(&libs);
    let status = Command::new("mvn")
        .args(["-q", "-B", "-f"])
        .arg(&pom)
        .args(["dependency:copy-dependencies", "-DincludeScope=runtime"])
        .arg(format!("-DoutputDirectory={}", libs.display()))
        .status();
    let _ = std::fs::remove_dir(&lock);
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            panic!("mvn dependency:copy-dependencies of testkit/kafka/pom.xml exited with {s}")
        }
        Err(e) => panic!("Apache Kafka's jars come from Maven Central through `mvn`: {e}"),
    }
    std::fs::write(&marker, wanted).expect("writing the broker cache marker");
    libs
}

/// Apache Kafka (the pinned `kafka_2.13`, see [`apache_kafka_libs`]), one node in KRaft mode
/// (broker and controller), on free loopback ports, its storage formatted in a directory of its
/// own and removed with it; stopped (SIGKILL) when dropped. Unlike the mock cluster,
/// it hides aborted transactions from `read_committed` readers, fences zombies by epoch,
/// answers offsets-for-times and creates topics.
#[derive(Debug)]
pub struct ApacheKafka {
    child: Option<Child>,
    dir: PathBuf,
    properties: PathBuf,
    classpath: String,
    /// `bootstrap.servers` of the broker.
    pub bootstrap: String,
}

impl ApacheKafka {
    /// Starts the broker and waits until it accepts connections.
    pub fn start() -> ApacheKafka {
        let mut nodes = Self::nodes(1);
        nodes.pop().expect("one node")
    }

    /// `n` nodes of one KRaft cluster, each a broker and a controller, started and listening.
    /// Internal topics are replicated to min(n, 3) nodes and need two in sync from 3 nodes on,
    /// as production clusters set them.
    fn nodes(n: usize) -> Vec<ApacheKafka> {
        let libs = apache_kafka_libs();
        let classpath = format!("{}/*", libs.display());
        let free = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        // Every port bound at once (then released), so that no two are the same.
        let listeners: Vec<_> = (0..2 * n).map(|_| free()).collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().expect("port").port())
            .collect();
        drop(listeners);
        let voters: Vec<String> = (0..n)
            .map(|i| format!("{}@127.0.0.1:{}", i + 1, ports[2 * i + 1]))
            .collect();
        let replicas = n.min(3);
        let in_sync = if n >= 3 { 2 } else { 1 };
        let mut nodes: Vec<ApacheKafka> = (0..n)
            .map(|i| {
                let (port, controller) = (ports[2 * i], ports[2 * i + 1]);
                let dir = std::env::temp_dir()
                    .join(format!("riskpipe-kafka-{}-{port}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("the broker's directory");
                let properties = dir.join("server.properties");
                // No retention: tests stamp records at event times years back.
                std::fs::write(
                    &properties,
                    format!(
                        "process.roles=broker,controller\n\
                         node.id={id}\n\
                         controller.quorum.voters={voters}\n\
                         listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}\n\
                         advertised.listeners=PLAINTEXT://127.0.0.1:{port}\n\
                         controller.listener.names=CONTROLLER\n\
                         listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n\
                         log.dirs={data}\n\
                         offsets.topic.replication.factor={replicas}\n\
                         offsets.topic.num.partitions=4\n\
                         transaction.state.log.replication.factor={replicas}\n\
                         transaction.state.log.min.isr={in_sync}\n\
                         transaction.state.log.num.partitions=4\n\
                         default.replication.factor={replicas}\n\
                         min.insync.replicas={in_sync}\n\
                         group.initial.rebalance.delay.ms=0\n\
                         group.min.session.timeout.ms=1000\n\
                         log.retention.ms=-1\n\
                         auto.create.topics.enable=false\n",
                        id = i + 1,
                        voters = voters.join(","),
                        data = dir.join("data").display()
                    ),
                )
                .expect("server.properties");
                let status = java(&classpath, "kafka.tools.StorageTool")
                    .args([
                        "format",
                        "--ignore-formatted",
                        "-t",
                        "4L6g3nShT-eMCtK--X86sw",
                        "-c",
                    ])
                    .arg(&properties)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("java must run Kafka's StorageTool");
                assert!(
                    status.success(),
                    "formatting the broker's storage exited with {status}"
                );
                ApacheKafka {
                    child: None,
                    dir,
                    properties,
                    classpath: classpath.clone(),
                    bootstrap: format!("127.0.0.1:{port}"),
                }
            })
            .collect();
        // All started before any is waited for: a node of several opens its listener only once
        // a quorum of controllers runs.
        for node in &mut nodes {
            node.spawn();
        }
        for node in &mut nodes {
            node.wait_listening();
        }
        nodes
    }

    /// Starts the broker process on the formatted storage and waits until it listens.
    fn launch(&mut self) {
        self.spawn();
        self.wait_listening();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("broker log");
        let child = java(&self.classpath, "kafka.Kafka")
            .arg(&self.properties)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("java must start the Kafka broker");
        self.child = Some(child);
    }

    fn wait_listening(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while std::net::TcpStream::connect(&self.bootstrap).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "the Kafka broker exited with {status}: {}",
                    std::fs::read_to_string(self.dir.join("broker.log")).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Kafka does not listen on {}",
                self.bootstrap
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Kills the broker (SIGKILL: no controlled shutdown), its storage kept.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed broker again on the same ports and storage, and waits until it
    /// listens (the log recovery after a SIGKILL included).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

/// A JVM running `class` of the broker's jars, with a small heap and the quick JIT tier: the
/// tests' broker starts in seconds on 2 cores.
fn java(classpath: &str, class: &str) -> Command {
    let mut c = Command::new("java");
    c.args([
        "-Xmx512m",
        "-XX:+UseSerialGC",
        "-XX:TieredStopAtLevel=1",
        "-cp",
    ])
    .arg(classpath)
    .arg(class);
    c
}

/// Several Apache Kafka nodes in one KRaft cluster (each a broker and a controller; internal
/// topics replicated to three, two in sync): for the tests that need replication or the loss
/// of a broker. Each node is stopped when the cluster is dropped.
#[derive(Debug)]
pub struct ApacheKafkaCluster {
    /// The nodes, node id `i + 1` at index `i`.
    pub nodes: Vec<ApacheKafka>,
    /// `bootstrap.servers` of every node.
    pub bootstrap: String,
}

impl ApacheKafkaCluster {
    /// Starts `n` nodes and waits until each listens.
    pub fn start(n: usize) -> ApacheKafkaCluster {
        let nodes = ApacheKafka::nodes(n);
        let bootstrap = nodes
            .iter()
            .map(|k| k.bootstrap.as_str())
            .collect::<Vec<_>>()
            .join(",");
        ApacheKafkaCluster { nodes, bootstrap }
    }
}

impl Drop for ApacheKafka {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Python virtual environment with the packages of `requirements` (a pinned requirements
/// file), made once with the machine's `python3 -m venv` and pip and kept beside the build
/// outputs (`target/<profile>/python-<name>/`); made anew when the requirements change. Returns
/// its `python` executable. Panics with the reason when it cannot be made.
pub fn python_env(name: &str, requirements: &std::path::Path) -> PathBuf {
    let wanted = std::fs::read_to_string(requirements)
        .unwrap_or_else(|e| panic!("reading {}: {e}", requirements.display()));
    let exe = std::env::current_exe().expect("the running executable's path");
    let dir = exe.parent().expect("the executable's directory");
    let profile_dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    let venv = profile_dir.join(format!("python-{name}"));
    let python = venv.join("bin").join("python");
    let marker = venv.join("riskpipe-requirements.txt");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str()) && python.is_file()
    {
        return python;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let run = |cmd: &mut Command, what: &str| {
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(status.success(), "{what} exited with {status}");
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(requirements),
        "pip install",
    );
    std::fs::write(&marker, wanted).expect("writing the venv marker");
    python
}
