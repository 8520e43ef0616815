//! Helpers shared by the process tests: start `neo` nodes on 127.0.0.1, drive them with
//! `neo ctl`, speak the protocol to them. Waiting is by polling with a generous deadline
//! (never a timed assertion): a test fails only if a state is never reached.

#![allow(dead_code)]

pub mod writes;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const NEO: &str = env!("CARGO_BIN_EXE_neo");
pub const CLUSTER: &str = "processes";
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Children killed when the test ends, however it ends.
pub struct Processes(pub Vec<(String, Child)>);

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Processes {
    pub fn kill(&mut self, name: &str) {
        let index = self.0.iter().position(|(n, _)| n == name).expect("known process");
        let (_, mut child) = self.0.remove(index);
        child.kill().unwrap();
        child.wait().unwrap();
        event(&format!("killed {name}"));
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGTERM...) to process `name`.
    pub fn signal(&self, name: &str, signal: i32) {
        let (_, child) = self.0.iter().find(|(n, _)| n == name).expect("known process");
        // SAFETY: sending a signal to our own child process.
        let sent = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(sent, 0, "kill({name}, {signal})");
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    /// The exit code of process `name` if it has exited (it is then forgotten).
    pub fn exited(&mut self, name: &str) -> Option<Option<i32>> {
        let index = self.0.iter().position(|(n, _)| n == name)?;
        let status = self.0[index].1.try_wait().unwrap()?;
        self.0.remove(index);
        Some(status.code())
    }
}

/// Prints the files it names if the test panics while it lives (nodes' logs, for a
/// failure seen only in CI).
pub struct DumpOnPanic(pub Vec<std::path::PathBuf>);

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for path in &self.0 {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                eprintln!("----- {} -----\n{text}", path.display());
            }
        }
    }
}

/// A small seeded pseudo-random sequence (xorshift64*), for kill loops that a failure's
/// seed can replay.
pub struct Random(u64);

impl Random {
    /// Seeded from `NEO_TEST_SEED`, else from the clock; the seed is printed.
    pub fn new(test: &str) -> Random {
        let seed =
            std::env::var("NEO_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: NEO_TEST_SEED={seed}");
        Random(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `low..high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

/// Spawns `command` (stderr discarded) and returns it with the first line it prints: the
/// address it listens on.
pub fn spawn_announcing(command: &mut Command) -> (Child, String) {
    let mut child = command.stdout(Stdio::piped()).stderr(node_stderr()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    (child, line)
}

/// The nodes' stderr: discarded, unless `NEO_TEST_LOG=1` (for debugging a test).
pub fn node_stderr() -> Stdio {
    if std::env::var_os("NEO_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() }
}

/// With `NEO_TEST_LOG=1`, relays `child`'s stderr (which must be piped) line by line,
/// each prefixed with the time since the test began and `name`, and says what the test
/// does to it (`event`): a kill loop's story, in order.
pub fn relay_stderr(child: &mut Child, name: &str) {
    if let Some(stderr) = child.stderr.take() {
        let name = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("{:9.3} [{name}] {line}", test_clock());
            }
        });
    }
}

/// Logs a test's step among the nodes' lines (with `NEO_TEST_LOG=1`).
pub fn event(what: &str) {
    if std::env::var_os("NEO_TEST_LOG").is_some() {
        eprintln!("{:9.3} [test] {what}", test_clock());
    }
}

fn test_clock() -> f64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// The nodes' stderr when they are named: piped for `relay_stderr` with `NEO_TEST_LOG=1`.
pub fn named_stderr() -> Stdio {
    if std::env::var_os("NEO_TEST_LOG").is_some() { Stdio::piped() } else { Stdio::null() }
}

/// Starts a master on a free port and returns its address.
pub fn start_master(processes: &mut Processes, bind: &str) -> String {
    start_master_with(processes, "master", &["--bind", bind])
}

/// Starts a master named `name` with extra options (unless given: `--bind 127.0.0.1:0`,
/// 6 partitions, 1 replica).
pub fn start_master_with(processes: &mut Processes, name: &str, options: &[&str]) -> String {
    let mut command = Command::new(NEO);
    command.args(["master", "--cluster", CLUSTER]);
    for (option, default) in [("--bind", "127.0.0.1:0"), ("--partitions", "6"), ("--replicas", "1")]
    {
        if !options.contains(&option) {
            command.args([option, default]);
        }
    }
    let mut child =
        command.args(options).stdout(Stdio::piped()).stderr(named_stderr()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    relay_stderr(&mut child, name);
    event(&format!("started {name}"));
    let address =
        line.trim().rsplit(' ').next().expect("neo master: listening on ADDRESS").to_owned();
    processes.0.push((name.to_owned(), child));
    address
}

pub fn start_storage(processes: &mut Processes, master: &str, data: &Path, host: &str) {
    start_storage_env(processes, master, data, host, &[]);
}

/// `start_storage` with environment variables (test hooks such as `NEO_SEGMENT_SIZE`).
pub fn start_storage_env(
    processes: &mut Processes,
    master: &str,
    data: &Path,
    host: &str,
    env: &[(&str, &str)],
) {
    let mut child = Command::new(NEO)
        .envs(env.iter().copied())
        .args(["storage", "--cluster", CLUSTER, "--master", master, "--host", host])
        .arg("--data")
        .arg(data)
        .stdout(Stdio::null())
        .stderr(named_stderr())
        .spawn()
        .unwrap();
    relay_stderr(&mut child, host);
    event(&format!("started {host}"));
    processes.0.push((host.to_owned(), child));
}

pub fn ctl(master: &str, words: &[&str]) -> Output {
    Command::new(NEO)
        .args(["ctl", "--cluster", CLUSTER, "--master", master])
        .args(words)
        .output()
        .unwrap()
}

pub fn ctl_text(master: &str, words: &[&str]) -> String {
    let output = ctl(master, words);
    assert!(output.status.success(), "ctl {words:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Polls `ctl` until `accept` likes the output.
pub fn wait_for(master: &str, words: &[&str], what: &str, accept: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let output = ctl(master, words);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && accept(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "never saw {what}; last output:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A master and storages on `hosts`, started with `ctl start`, RUNNING.
pub fn running_cluster(directory: &Path, hosts: &[&str]) -> (Processes, String) {
    let mut processes = Processes(Vec::new());
    let master = start_master(&mut processes, "127.0.0.1:0");
    start_storages_and_run(&mut processes, &master, directory, hosts);
    (processes, master)
}

/// Storages on `hosts` given `masters`, then `ctl start` (through the same list): RUNNING.
pub fn start_storages_and_run(
    processes: &mut Processes,
    masters: &str,
    directory: &Path,
    hosts: &[&str],
) {
    for host in hosts {
        start_storage(processes, masters, &directory.join(host), host);
    }
    wait_for(masters, &["print", "node"], "pending storages", |text| {
        text.lines().filter(|l| l.contains("STORAGE") && l.contains("PENDING")).count()
            == hosts.len()
    });
    ctl_text(masters, &["start"]);
    wait_for(masters, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");
}

/// The grid lines of `ctl print pt`, one per node.
pub fn grid(text: &str) -> Vec<String> {
    text.lines().skip(1).filter(|l| !l.starts_with("replicating:")).map(str::to_owned).collect()
}

pub fn two_master_cluster(directory: &Path, hosts: &[&str]) -> (Processes, String, String) {
    let mut processes = Processes(Vec::new());
    let first = start_master(&mut processes, "127.0.0.1:0");
    let second = start_master_with(&mut processes, "secondary", &["--masters", &first]);
    start_storages_and_run(&mut processes, &format!("{first},{second}"), directory, hosts);
    (processes, first, second)
}

/// A blocking peer speaking the protocol to a node's port, as a client or storage would.
pub struct Peer {
    stream: std::net::TcpStream,
    decoder: wire::FrameDecoder,
    next_id: u32,
}

impl Peer {
    pub fn connect(address: &str, node_type: wire::NodeType) -> Peer {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.write_all(&wire::Hello::new(node_type, CLUSTER).encode()).unwrap();
        let mut hello = [0u8; 16];
        stream.read_exact(&mut hello).unwrap();
        wire::Hello::decode(&hello).unwrap();
        Peer { stream, decoder: wire::FrameDecoder::new(), next_id: 1 }
    }

    /// Sends bytes as they are (a frame cut short, say).
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.stream.write_all(bytes)
    }

    /// Sends a notification (no answer expected).
    pub fn tell<M: wire::Body>(&mut self, message: &M) {
        use std::io::Write;
        let mut out = bytes::BytesMut::new();
        if let Some(payload) = wire::encode_frame(&mut out, self.next_id, message).unwrap() {
            out.extend_from_slice(payload);
        }
        self.next_id += 1;
        self.stream.write_all(&out).unwrap();
    }

    /// The next message the node sends, or None when it closed the connection.
    pub fn receive(&mut self) -> Option<wire::Message> {
        use std::io::Read;
        loop {
            if let Some(frame) = self.decoder.next_frame().unwrap() {
                return Some(frame.message().unwrap());
            }
            let mut chunk = [0u8; 4096];
            let read = self.stream.read(&mut chunk).ok()?;
            if read == 0 {
                return None;
            }
            self.decoder.extend_from_slice(&chunk[..read]);
        }
    }

    /// Sends a request and returns its answer, or None when the node closed the connection.
    pub fn ask<M: wire::Body>(&mut self, message: &M) -> Option<wire::Message> {
        use std::io::{Read, Write};
        let mut out = bytes::BytesMut::new();
        let msg_id = self.next_id;
        if let Some(payload) = wire::encode_frame(&mut out, msg_id, message).unwrap() {
            out.extend_from_slice(payload);
        }
        self.next_id += 1;
        self.stream.write_all(&out).ok()?;
        loop {
            // Notifications the node pushes meanwhile are skipped.
            while let Some(frame) = self.decoder.next_frame().unwrap() {
                if frame.msg_id == msg_id && frame.kind.is_answer() {
                    return Some(frame.message().unwrap());
                }
            }
            let mut chunk = [0u8; 4096];
            let read = self.stream.read(&mut chunk).ok()?;
            if read == 0 {
                return None;
            }
            self.decoder.extend_from_slice(&chunk[..read]);
        }
    }
}

/// A peer identified to the master as a new client: its connection, its id and the stamp
/// the master gave it (read from the node list the master sends it), which storages ask
/// for.
pub fn client_at_master(master: &str) -> (Peer, wire::NodeId, u64) {
    let mut peer = Peer::connect(master, wire::NodeType::Client);
    let Some(wire::Message::AcceptIdentification(accepted)) = peer.ask(&identification(None))
    else {
        panic!("the master did not accept a client");
    };
    let nid = accepted.your_nid.expect("an id");
    loop {
        match peer.receive() {
            Some(wire::Message::NotifyNodeInformation(list)) => {
                let own = list.nodes.iter().find(|n| n.nid == Some(nid));
                if let Some(stamp) = own.and_then(|n| n.id_timestamp) {
                    return (peer, nid, stamp);
                }
            }
            Some(_) => {}
            None => panic!("the master closed before sending {nid} its node list"),
        }
    }
}

/// A peer identified at a storage as `nid` with its `stamp` (a client the primary
/// announced): a storage that has not heard of it yet answers NOT_READY and closes, so it
/// connects again.
pub fn admitted_at_storage(storage: &str, nid: wire::NodeId, stamp: u64) -> Peer {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut peer = Peer::connect(storage, nid.node_type());
        let request =
            wire::RequestIdentification { id_timestamp: Some(stamp), ..identification(Some(nid)) };
        match peer.ask(&request) {
            Some(wire::Message::AcceptIdentification(_)) => return peer,
            Some(wire::Message::Error(e)) if e.code == wire::ErrorCode::NotReady => {}
            other => panic!("{nid} not admitted: {other:?}"),
        }
        assert!(Instant::now() < deadline, "{nid} never admitted at {storage}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn identification(nid: Option<wire::NodeId>) -> wire::RequestIdentification {
    wire::RequestIdentification {
        node_type: nid.map_or(wire::NodeType::Client, wire::NodeId::node_type),
        nid,
        address: None,
        cluster_name: CLUSTER.into(),
        id_timestamp: None,
        devpath: Vec::new(),
        read_only: false,
        backup: Vec::new(),
        new_nid: None,
    }
}

/// Waits for a child to exit on its own and returns its exit code.
pub fn wait_exit(processes: &mut Processes, name: &str) -> Option<i32> {
    let index = processes.0.iter().position(|(n, _)| n == name).expect("known process");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = processes.0[index].1.try_wait().unwrap() {
            processes.0.remove(index);
            return status.code();
        }
        assert!(Instant::now() < deadline, "{name} never exited");
        std::thread::sleep(Duration::from_millis(50));
    }
}
