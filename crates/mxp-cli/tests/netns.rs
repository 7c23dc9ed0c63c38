//! A node and a client on two "hosts": network namespaces joined by a veth
//! pair, so packets cross a real (virtual) link instead of loopback.
//!
//! Needs root and `ip` (iproute2). Where either is missing, or the sandbox
//! does not allow network namespaces, the test prints `skipping: <reason>`
//! and passes. Namespaces and links carry this process's id, are deleted
//! when the test ends (also when it fails), and ones left behind by a run
//! that was killed are swept at the start.

mod common;

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::Instant;

use serde_json::Value;

use common::process::{Guarded, Outcome, PATIENCE, drain, read_lines, run_command};

/// Prefix of every namespace this test creates: `mxpt-<pid>-<a|b>`.
const NS_PREFIX: &str = "mxpt-";
/// Prefix of the veth ends: `mxa<pid>` and `mxb<pid>` (at most 10 of the 15
/// characters an interface name may have).
const VETH_PREFIX: &str = "mxa";

const BIN: &str = env!("CARGO_BIN_EXE_mxp");

/// Runs `program ARGS...` to completion (or fails after [`PATIENCE`]).
fn run(program: &str, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_command(cmd, format!("{program} {}", args.join(" ")))
}

/// Runs `ip ARGS...`; `Err` carries what it said.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = run("ip", args);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            out.stderr.trim()
        ))
    }
}

/// Prints past the test harness's output capture, so a skip is visible in
/// a plain `cargo test`.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether this process runs with effective uid 0.
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The pid in a name this test made (`mxpt-<pid>-a`, `mxa<pid>`), if the
/// process that made it is gone.
fn dead_owner(name: &str, prefix: &str) -> bool {
    let Some(rest) = name.strip_prefix(prefix) else {
        return false;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    match digits.parse::<u32>() {
        Ok(pid) => pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists(),
        Err(_) => false,
    }
}

/// Deletes namespaces and links left behind by earlier runs that were
/// killed before they could clean up.
fn sweep_leftovers() {
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if dead_owner(name, NS_PREFIX) {
                let _ = ip(&["netns", "delete", name]);
            }
        }
    }
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            // "7: mxa1234@mxb1234: <BROADCAST,...> ..."
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or_default();
            if dead_owner(name, VETH_PREFIX) {
                let _ = ip(&["link", "delete", name]);
            }
        }
    }
}

/// Two namespaces joined by a veth pair; deleted on drop.
struct TwoHosts {
    namespaces: Vec<String>,
    veth: Option<String>,
    server_ip: Ipv4Addr,
    client_ip: Ipv4Addr,
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it
        // the pair; the link is deleted by name in case it never moved.
        for ns in &self.namespaces {
            if let Err(e) = ip(&["netns", "delete", ns]) {
                say(&format!("cleanup: {e}"));
            }
        }
        if let Some(veth) = &self.veth {
            let _ = ip(&["link", "delete", veth]);
        }
    }
}

impl TwoHosts {
    /// Sets the hosts up, or says why this machine cannot.
    fn new() -> Result<TwoHosts, String> {
        if !is_root() {
            return Err("not running as root (network namespaces need it)".to_owned());
        }
        match Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => {}
            _ => {
                return Err(
                    "the `ip` command (iproute2) is missing: apt-get install iproute2".to_owned(),
                );
            }
        }
        sweep_leftovers();

        let pid = std::process::id();
        // 10.x.y.1 and 10.x.y.2 from the pid: private to the two
        // namespaces (concurrent runs could even share them), distinct anyway.
        let (hi, lo) = (((pid >> 8) & 0xff) as u8, (pid & 0xff) as u8);
        let mut hosts = TwoHosts {
            namespaces: Vec::new(),
            veth: None,
            server_ip: Ipv4Addr::new(10, hi, lo, 1),
            client_ip: Ipv4Addr::new(10, hi, lo, 2),
        };
        let server_ns = format!("{NS_PREFIX}{pid}-a");
        let client_ns = format!("{NS_PREFIX}{pid}-b");
        for ns in [&server_ns, &client_ns] {
            ip(&["netns", "add", ns])?;
            hosts.namespaces.push(ns.clone());
        }
        // Some sandboxes let a namespace be created but not entered.
        ip(&["netns", "exec", &server_ns, "true"])?;
        let (a, b) = (format!("{VETH_PREFIX}{pid}"), format!("mxb{pid}"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        hosts.veth = Some(a.clone());
        for (dev, ns, addr) in [
            (&a, &server_ns, hosts.server_ip),
            (&b, &client_ns, hosts.client_ip),
        ] {
            ip(&["link", "set", dev, "netns", ns])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    fn server_ns(&self) -> &str {
        &self.namespaces[0]
    }

    fn client_ns(&self) -> &str {
        &self.namespaces[1]
    }
}

/// A directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!("mxp-netns-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `mxp serve` inside a namespace, killed on drop.
struct Node {
    process: Guarded,
    key: String,
    stderr: Option<JoinHandle<String>>,
}

impl Node {
    fn start(ns: &str, listen: SocketAddr, key_file: &Path) -> Node {
        let listen = listen.to_string();
        let key_file = key_file.to_str().expect("UTF-8 temp path");
        let mut cmd = Command::new("ip");
        // `ip netns exec` execs the command in place, so the child is the
        // node itself and killing it kills the node.
        cmd.args(["netns", "exec", ns, BIN, "serve", "--listen", &listen])
            .args(["--key", key_file]);
        let mut process = Guarded::spawn(cmd, format!("mxp serve in {ns}"));
        let lines = read_lines(process.child.stdout.take().expect("piped stdout"));
        let stderr = drain(process.child.stderr.take());
        let deadline = Instant::now() + PATIENCE;
        let (mut listening, mut key) = (false, None);
        let mut seen = Vec::new();
        while !listening || key.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("mxp node listening on ") {
                        assert_eq!(a.trim(), listen, "{line}");
                        listening = true;
                    } else if let Some(k) = line.strip_prefix("public key: ") {
                        key = k.split_whitespace().next().map(str::to_owned);
                    }
                    seen.push(line);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = process.wait(String::new);
                    panic!(
                        "the node exited ({status}) before it was ready; stdout: {seen:#?}; \
                         stderr:\n{}",
                        stderr.join().unwrap_or_default()
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("the node printed no address and key within {PATIENCE:?}: {seen:#?}")
                }
            }
        }
        Node {
            process,
            key: key.expect("key"),
            stderr: Some(stderr),
        }
    }

    /// Stops the node (SIGTERM) and returns its log.
    fn stop(mut self) -> (ExitStatus, String) {
        let pid = self.process.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.process.wait(String::new);
        let log = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        (status, log)
    }
}

#[test]
fn ping_between_two_hosts_joined_by_a_veth_pair() {
    let hosts = match TwoHosts::new() {
        Ok(hosts) => hosts,
        Err(reason) => {
            say(&format!("skipping: {reason}"));
            return;
        }
    };
    let keys = TempDir::new();
    let keygen = run(
        BIN,
        &["keygen", "--out", keys.0.to_str().expect("UTF-8 temp path")],
    );
    assert!(keygen.status.success(), "{keygen:#?}");
    let public = keygen.stdout.trim().to_owned();

    let listen = SocketAddr::from((hosts.server_ip, 9000));
    let node = Node::start(hosts.server_ns(), listen, &keys.0.join("node.key"));
    assert_eq!(node.key, public);

    let url = format!("mxp://{listen}");
    let ping = run(
        "ip",
        &[
            "netns",
            "exec",
            hosts.client_ns(),
            BIN,
            "ping",
            &url,
            "--server-key",
            &public,
            "-c",
            "200",
            "--json",
        ],
    );
    assert!(ping.status.success(), "{ping:#?}");
    let report: Value = serde_json::from_str(ping.stdout.trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {ping:#?}"));
    assert_eq!(report["sent"], 200, "{report}");
    assert_eq!(report["received"], 200, "{report}");
    let p99 = report["rtt_us"]["p99"].as_f64().expect("rtt_us.p99");
    assert!(p99 > 0.0, "{report}");

    let call = run(
        "ip",
        &[
            "netns",
            "exec",
            hosts.client_ns(),
            BIN,
            "call",
            &url,
            "--server-key",
            &public,
            "--data",
            "across the veth",
        ],
    );
    assert!(call.status.success(), "{call:#?}");
    assert_eq!(call.stdout, "across the veth\n");

    let (status, log) = node.stop();
    assert!(status.success(), "the node exited with {status}: {log}");
    // The node saw the client at its own address on the other host, not
    // over loopback.
    let peer = format!("peer={}:", hosts.client_ip);
    assert!(
        log.lines()
            .any(|l| l.contains("connected") && l.contains(&peer)),
        "no connection from {} in the node's log:\n{log}",
        hosts.client_ip
    );
    drop(hosts);
}
