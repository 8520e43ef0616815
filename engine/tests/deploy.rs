//! deploy/: the example configurations start the three-host cluster they describe (on
//! loopback: 10.0.0.N becomes 127.0.0.N, the ports free ones), the systemd units run what
//! the configurations are for, and make-certs.sh makes certificates `openssl verify`
//! accepts (openssl is required: scripts/test.sh installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::*;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// A port free on 127.0.0.1, .2 and .3 (each host of the example binds its own address).
fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let free = ["127.0.0.2", "127.0.0.3"]
            .iter()
            .all(|ip| std::net::TcpListener::bind((*ip, port)).is_ok());
        if free {
            return port;
        }
    }
}

/// The example configurations on loopback: (host1, host2, host3) files in `directory`;
/// with `tls`, their TLS lines uncommented and pointed at that directory of certificates.
fn loopback_configs(directory: &Path, tls: Option<&Path>) -> Vec<PathBuf> {
    let (master, storage, admin) = (free_port(), free_port(), free_port());
    let one_cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) < 2;
    (1..=3)
        .map(|host| {
            let text = std::fs::read_to_string(deploy().join(format!("examples/host{host}.toml")))
                .unwrap();
            let mut text = text
                .replace("10.0.0.", "127.0.0.")
                .replace(":10000", &format!(":{master}"))
                .replace(":20000", &format!(":{storage}"))
                .replace("127.0.0.1:9999", &format!("127.0.0.1:{admin}"));
            if let Some(tls) = tls {
                let tls = format!("{}/", tls.display());
                text = text
                    .lines()
                    .map(|l| match l.strip_prefix("# ") {
                        Some(l) if ["ca =", "cert =", "key ="].iter().any(|k| l.starts_with(k)) => {
                            l.replace("/etc/neo/tls/", &tls)
                        }
                        _ => l.to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            if one_cpu {
                // `cpus = "1"` pins the storage core to a CPU this machine lacks.
                text = text
                    .lines()
                    .filter(|l| !l.starts_with("cpus ="))
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            let path = directory.join(format!("host{host}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

fn start(processes: &mut Processes, name: &str, config: &Path, role: &str, extra: &[&str]) {
    let mut child = Command::new(NEO)
        .arg("--config")
        .arg(config)
        .arg(role)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(node_stderr())
        .spawn()
        .unwrap();
    relay_stderr(&mut child, name);
    event(&format!("started {name}"));
    processes.0.push((name.to_owned(), child));
}

/// `neo --config host1.toml ctl WORDS`: the [ctl] table names the cluster and the admin.
fn ctl_with(config: &Path, words: &[&str]) -> Output {
    Command::new(NEO).arg("--config").arg(config).arg("ctl").args(words).output().unwrap()
}

fn wait_ctl(config: &Path, words: &[&str], what: &str, accept: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let output = ctl_with(config, words);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && accept(&text) {
            return text;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(std::time::Instant::now() < deadline, "never saw {what}; last:\n{text}{stderr}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn the_example_configurations_start_the_cluster_they_describe() {
    let directory = tempfile::tempdir().unwrap();
    let configs = loopback_configs(directory.path(), None);
    run_example_cluster(directory.path(), &configs, || {});
}

/// The same with their TLS lines uncommented, and certificates made by make-certs.sh: each
/// host's carries its roles, ctl's an operator's (neo-admin).
#[test]
fn the_example_configurations_run_over_tls_with_make_certs_certificates() {
    // scripts/test.sh installs openssl: without it this test fails rather than pass
    // untested.
    assert!(openssl(), "the openssl command is needed (scripts/test.sh installs it)");
    let directory = tempfile::tempdir().unwrap();
    let tls = directory.path().join("tls");
    let make = |arguments: &[&str]| {
        let output = Command::new("bash")
            .arg(deploy().join("make-certs.sh"))
            .arg("-d")
            .arg(&tls)
            .args(arguments)
            .output()
            .unwrap();
        assert!(output.status.success(), "make-certs.sh {arguments:?}: {output:?}");
    };
    make(&["ca"]);
    make(&["host", "host1", "master,storage,admin", "IP:127.0.0.1"]);
    make(&["host", "host2", "master,storage", "IP:127.0.0.2"]);
    make(&["host", "host3", "master,storage", "IP:127.0.0.3"]);
    make(&["operator", "alice"]);
    let configs = loopback_configs(directory.path(), Some(&tls));
    let host1 = std::fs::read_to_string(&configs[0]).unwrap();
    assert_eq!(host1.lines().filter(|l| l.starts_with("cert = ")).count(), 4, "{host1}");
    let admin = host1.lines().find_map(|l| l.strip_prefix("admin = ")).unwrap();
    let admin = admin.trim_matches('"').to_owned();
    run_example_cluster(directory.path(), &configs, move || {
        // ctl without the certificates is not let in, and is told why.
        let plain = Command::new(NEO)
            .args(["ctl", "--cluster", "prod", "--admin", &admin, "print", "cluster"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&plain.stderr);
        assert!(!plain.status.success() && stderr.contains("TLS"), "{plain:?}");
    });
}

fn openssl() -> bool {
    Command::new("openssl").arg("version").output().is_ok_and(|o| o.status.success())
}

/// Starts every node of the three example hosts, starts the new cluster with ctl through
/// the admin, checks the table, calls `while_running`, and stops the cluster cleanly.
fn run_example_cluster(directory: &Path, configs: &[PathBuf], while_running: impl FnOnce()) {
    let mut processes = Processes(Vec::new());
    for (index, config) in configs.iter().enumerate() {
        let host = index + 1;
        start(&mut processes, &format!("master{host}"), config, "master", &[]);
        let data = directory.join(format!("storage{host}"));
        let data = data.to_str().unwrap();
        start(&mut processes, &format!("storage{host}"), config, "storage", &["--data", data]);
    }
    start(&mut processes, "admin", &configs[0], "admin", &[]);

    let host1 = &configs[0];
    wait_ctl(host1, &["print", "node"], "three masters and three pending storages", |text| {
        let count =
            |a: &str, b: &str| text.lines().filter(|l| l.contains(a) && l.contains(b)).count();
        count("MASTER", "RUNNING") == 3 && count("STORAGE", "PENDING") == 3
    });
    let started = ctl_with(host1, &["start"]);
    assert!(started.status.success(), "{started:?}");
    wait_ctl(host1, &["print", "cluster"], "RUNNING", |text| text == "RUNNING\n");

    // 120 partitions, two copies each (replicas = 1), on three host labels: 80 cells each.
    let table = ctl_with(host1, &["print", "pt"]);
    let text = String::from_utf8(table.stdout).unwrap();
    let storages: Vec<&str> = text.lines().filter(|l| l.starts_with('S')).collect();
    assert_eq!(storages.len(), 3, "{text}");
    for line in &storages {
        let cells = line.chars().filter(|c| *c == 'U').count();
        assert_eq!(cells, 80, "{text}");
    }

    while_running();

    // A clean stop exits 0: systemd's Restart=on-failure leaves the nodes stopped.
    let stopping = ctl_with(host1, &["set", "cluster", "STOPPING"]);
    assert!(stopping.status.success(), "{stopping:?}");
    for name in ["storage1", "storage2", "storage3", "master1", "master2", "master3"] {
        assert_eq!(wait_exit(&mut processes, name), Some(0), "{name}");
    }
}

/// The `[Service]` settings of a unit file, as (key, value) in order.
fn service_settings(unit: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy().join(unit)).unwrap();
    text.lines()
        .skip_while(|l| *l != "[Service]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.starts_with('#') && l.contains('='))
        .map(|l| {
            let (key, value) = l.split_once('=').unwrap();
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn the_units_run_their_role_from_the_configuration_and_restart_on_failure() {
    for (unit, role) in [
        ("neo-master.service", "master"),
        ("neo-storage@.service", "storage"),
        ("neo-admin.service", "admin"),
    ] {
        let settings = service_settings(unit);
        let get = |key: &str| {
            settings
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{unit}: no {key}="))
        };
        let exec = get("ExecStart");
        assert!(
            exec.starts_with(&format!("/usr/local/bin/neo --config /etc/neo/neo.toml {role}")),
            "{unit}: {exec}"
        );
        assert_eq!(get("Restart"), "on-failure", "{unit}");
        assert_eq!(get("KillSignal"), "SIGTERM", "{unit}");
        assert_eq!(get("LimitMEMLOCK"), "infinity", "{unit}");
        assert_eq!(get("User"), "neo", "{unit}");
        let nofile: u64 = get("LimitNOFILE").parse().unwrap();
        assert!(nofile >= engine::doctor::NOFILE_RECOMMENDED, "{unit}");
        assert!(get("TimeoutStopSec").ends_with('s'), "{unit}");
        if role == "storage" {
            assert!(exec.contains("--data /var/lib/neo/%i"), "{exec}");
            assert!(!get("CPUAffinity").is_empty(), "{unit}");
        }
    }
}

#[test]
fn make_certs_makes_what_openssl_verifies() {
    assert!(openssl(), "the openssl command is needed (scripts/test.sh installs it)");
    let output = Command::new("bash").arg(deploy().join("test-make-certs.sh")).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success() && text.contains("make-certs: ok"), "{text}");
}

/// The units give `--data` on the command line beside the file's `[storage]`: an option of
/// both takes the command line's value, a list included (not both lists).
#[test]
fn the_command_line_replaces_the_files_options() {
    use std::io::{BufRead, BufReader};
    let directory = tempfile::tempdir().unwrap();
    let config = directory.path().join("neo.toml");
    let (from_file, from_command_line) = (directory.path().join("a"), directory.path().join("b"));
    std::fs::write(
        &config,
        format!(
            "[master]\ncluster = \"{CLUSTER}\"\nbind = \"127.0.0.1:0\"\npartitions = 5\n\
             storage_timeout = 2.5\nautostart = 1\n\
             [storage]\ncluster = \"{CLUSTER}\"\nmaster = [\"127.0.0.1:1\", \"127.0.0.1:3\"]\ndata = {:?}\n",
            from_file.display().to_string()
        ),
    )
    .unwrap();
    // A float from the file, and --partitions from the command line.
    let (child, line) = spawn_announcing(Command::new(NEO).arg("--config").arg(&config).args([
        "master",
        "--partitions",
        "7",
    ]));
    let mut processes = Processes(vec![("master".to_owned(), child)]);
    let master = line.trim().rsplit(' ').next().unwrap().to_owned();

    // The storage is given an address where no master listens, on the command line: it
    // says which masters it tries, and they are the command line's alone.
    let mut child = Command::new(NEO)
        .arg("--config")
        .arg(&config)
        .args(["storage", "--master=127.0.0.1:2", "--data"])
        .arg(&from_command_line)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    processes.0.push(("storage".to_owned(), child));
    let tried = stderr.lines().map(Result::unwrap).find(|l| l.contains("masters [")).unwrap();
    assert!(tried.contains("masters [127.0.0.1:2]"), "{tried}");
    assert!(from_command_line.exists() && !from_file.exists());
    processes.kill("storage");

    let data = directory.path().join("s");
    let mut child = Command::new(NEO)
        .arg("--config")
        .arg(&config)
        .args(["storage", "--master", &master, "--data"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(node_stderr())
        .spawn()
        .unwrap();
    relay_stderr(&mut child, "storage");
    processes.0.push(("storage".to_owned(), child));
    let table = wait_for(&master, &["print", "pt"], "a table", |text| text.starts_with("ptid"));
    assert!(table.starts_with("ptid 1, 0 replicas, 7 partitions"), "{table}");
}

/// `systemd-analyze verify` accepts the units (their ExecStart pointed at the neo under
/// test), where systemd is installed.
#[test]
fn systemd_accepts_the_units() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|o| o.status.success()) {
        eprintln!("systemd-analyze is not installed: the units not verified");
        return;
    }
    let directory = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for (unit, instance) in [
        ("neo-master.service", "neo-master.service"),
        ("neo-storage@.service", "neo-storage@0.service"),
        ("neo-admin.service", "neo-admin.service"),
    ] {
        let text = std::fs::read_to_string(deploy().join(unit)).unwrap();
        let path = directory.path().join(instance);
        std::fs::write(&path, text.replace("/usr/local/bin/neo", NEO)).unwrap();
        units.push(path);
    }
    let output = Command::new("systemd-analyze").arg("verify").args(&units).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success() && text.trim().is_empty(), "{text}");
}
