//! Mutual TLS and roles on real processes: a cluster started with certificates serves
//! clients and ctl holding the right ones, and turns away everyone else with an error that
//! says why: plain TCP, a certificate of another CA, a certificate without the role its
//! holder claims (a client's certificate used for admin requests or to pose as a storage).

#[path = "../src/tls_testing.rs"]
mod certs;
mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use bytes::Bytes;
use certs::Authority;
use common::*;
use engine::client::{Client, ClientOptions, TransactionMeta};
use engine::tls::{Tls, TlsFiles};
use wire::{ClusterState, NodeType, Oid};

fn tls_args(files: &TlsFiles) -> Vec<String> {
    ["--ca", "--cert", "--key"]
        .into_iter()
        .zip([&files.ca, &files.cert, &files.key])
        .flat_map(|(option, path)| [option.to_owned(), path.display().to_string()])
        .collect()
}

fn start_storage_tls(processes: &mut Processes, master: &str, data: &Path, files: &TlsFiles) {
    let host = data.file_name().unwrap().to_str().unwrap().to_owned();
    let mut child = Command::new(NEO)
        .args(["storage", "--cluster", CLUSTER, "--master", master, "--host", &host])
        .arg("--data")
        .arg(data)
        .args(tls_args(files))
        .stdout(Stdio::null())
        .stderr(named_stderr())
        .spawn()
        .unwrap();
    relay_stderr(&mut child, &host);
    processes.0.push((host, child));
}

fn ctl_with(master: &str, files: Option<&TlsFiles>, words: &[&str]) -> Output {
    Command::new(NEO)
        .args(["ctl", "--cluster", CLUSTER, "--master", master])
        .args(files.map(tls_args).unwrap_or_default())
        .args(words)
        .output()
        .unwrap()
}

fn wait_ctl(master: &str, files: &TlsFiles, words: &[&str], accept: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let output = ctl_with(master, Some(files), words);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() && accept(&text) {
            return;
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(std::time::Instant::now() < deadline, "ctl {words:?}: {text}{stderr}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn client_options(master: &str, tls: Option<&TlsFiles>) -> ClientOptions {
    let mut options = ClientOptions::new(CLUSTER, vec![master.parse().unwrap()]);
    options.cache_size = 0;
    options.tls = tls.map(|files| Tls::load(files).unwrap());
    options
}

/// ctl's requests sent in-process with any certificate: what the master decides, without
/// the `neo ctl` command's own check of its certificate.
fn ctl_in_process(master: &str, files: &TlsFiles, command: engine::ctl::Command) -> String {
    let tls = Tls::load(files).unwrap();
    let master: std::net::SocketAddr = master.parse().unwrap();
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            engine::net::use_tls(Some(tls));
            match engine::ctl::run(&[master], CLUSTER, &command, false).await {
                Ok(text) => format!("done: {text}"),
                Err(error) => format!("refused: {error}"),
            }
        })
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn a_tls_cluster_serves_certified_peers_in_their_roles_only() {
    let directory = tempfile::tempdir().unwrap();
    let certificates = directory.path().join("certificates");
    std::fs::create_dir(&certificates).unwrap();
    let ca = Authority::new(&certificates, "ca");
    let master_files = ca.issue("master", &[NodeType::Master]);
    let storage_files = ca.issue("storages", &[NodeType::Storage]);
    let admin_files = ca.issue("operator", &[NodeType::Admin]);
    let app_files = ca.issue("app", &[NodeType::Client]);
    let foreign_files =
        Authority::new(&certificates, "other-ca").issue("foreign", &[NodeType::Client]);

    let mut processes = Processes(Vec::new());
    let master_args = tls_args(&master_files);
    let master_args: Vec<&str> = master_args.iter().map(String::as_str).collect();
    let master = start_master_with(&mut processes, "master", &master_args);
    for host in ["s1", "s2"] {
        start_storage_tls(&mut processes, &master, &directory.path().join(host), &storage_files);
    }
    wait_ctl(&master, &admin_files, &["print", "node"], |text| {
        text.lines().filter(|l| l.contains("STORAGE") && l.contains("PENDING")).count() == 2
    });
    let started = ctl_with(&master, Some(&admin_files), &["start"]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    wait_ctl(&master, &admin_files, &["print", "cluster"], |text| text == "RUNNING\n");

    // An application with a client certificate commits and reads back, through TLS to the
    // master and to both storages.
    let client = Client::connect(client_options(&master, Some(&app_files))).unwrap();
    let oid = client.new_oid().unwrap();
    let data = Bytes::from(vec![7u8; 100_000]);
    let mut transaction = client.tpc_begin(None).unwrap();
    transaction.store(oid, wire::Tid::ZERO, data.clone()).unwrap();
    let meta = TransactionMeta {
        user: Bytes::from_static(b"tls"),
        description: Bytes::new(),
        extension: Bytes::new(),
    };
    assert!(transaction.vote(&meta).unwrap().is_empty());
    let tid = transaction.finish(|_| {}).unwrap();
    let loaded = client.load(oid).unwrap();
    assert_eq!((loaded.serial, &loaded.data), (tid, &data));
    client.close();

    // Plain TCP: refused at once, and told why.
    let error = Client::connect(client_options(&master, None)).unwrap_err().to_string();
    assert!(error.contains("speaks only TLS"), "{error}");
    let plain = ctl_with(&master, None, &["print", "cluster"]);
    assert_eq!(plain.status.code(), Some(3));
    let stderr_plain = String::from_utf8_lossy(&plain.stderr).into_owned();
    assert!(stderr_plain.contains("speaks only TLS"), "{stderr_plain}");

    // A certificate of another CA.
    let error = Client::connect(client_options(&master, Some(&foreign_files))).unwrap_err();
    let error = error.to_string();
    assert!(error.contains("TLS") && error.contains("certificate"), "{error}");

    // A client's certificate: `neo ctl` will not use it ...
    let local = ctl_with(&master, Some(&app_files), &["set", "cluster", "STOPPING"]);
    assert_eq!(local.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&local.stderr);
    assert!(stderr.contains("needs the organizational unit (OU) neo-admin"), "{stderr}");
    // ... and the master refuses admin requests from it, nor lets it pose as a storage.
    let outcome = ctl_in_process(
        &master,
        &app_files,
        engine::ctl::Command::SetCluster(ClusterState::Stopping),
    );
    assert!(outcome.starts_with("refused"), "{outcome}");
    assert!(outcome.contains("needs the OU neo-admin"), "{outcome}");
    let posing = ctl_in_process(&master, &storage_files, engine::ctl::Command::PrintCluster);
    assert!(posing.starts_with("refused"), "{posing}");
    wait_ctl(&master, &admin_files, &["print", "cluster"], |text| text == "RUNNING\n");

    // The cluster still serves its own.
    let client = Client::connect(client_options(&master, Some(&app_files))).unwrap();
    assert_eq!(client.load(oid).unwrap().data, data);
    assert!(client.load(Oid(oid.0 + 1000)).is_err());
    client.close();
}
