//! Packet capture from the operator's side: `mxp serve`, `mxp admin ADDR
//! capture start|status|stop` around `mxp ping`, and `node.capture` in the
//! config file; the files are read back with tshark (skipped where it is
//! missing, unless `MXP_REQUIRE_TSHARK` is set). The library's side (the
//! endpoint's capture and the admin routes) is tests/capture.rs at the
//! repository's root.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use mxp::capture::CaptureSummary;
use serde_json::Value;

use common::process::{Guarded, Outcome, PATIENCE, drain, read_lines, run_command};
use common::tempdir::{TempDir, path_str};
use common::tshark::tshark;

// ---------------------------------------------------------------------------
// The operator's commands: `mxp serve`, `mxp admin ... capture`, `mxp ping`.
// ---------------------------------------------------------------------------

fn mxp(args: &[&str]) -> Outcome {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxp"));
    cmd.args(args).env_remove("MXP_ADMIN_TOKEN");
    run_command(cmd, format!("mxp {}", args.join(" ")))
}

fn json(out: &Outcome) -> Value {
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {out:#?}", out.what))
}

/// A running `mxp serve`, with what it printed at start.
struct Node {
    process: Guarded,
    lines: std::sync::mpsc::Receiver<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
    addr: SocketAddr,
    key: String,
    admin: Option<String>,
    banner: Vec<String>,
}

impl Node {
    fn start(args: &[&str], cwd: &Path) -> Node {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxp"));
        cmd.arg("serve").args(args).current_dir(cwd);
        let mut process = Guarded::spawn(cmd, format!("mxp serve {}", args.join(" ")));
        let lines = read_lines(process.child.stdout.take().expect("piped stdout"));
        let stderr = Some(drain(process.child.stderr.take()));
        let mut banner = Vec::new();
        loop {
            let line = lines
                .recv_timeout(PATIENCE)
                .unwrap_or_else(|e| panic!("node banner incomplete ({e:?}): {banner:#?}"));
            let done = line.starts_with("try: mxp ping");
            banner.push(line);
            if done {
                break;
            }
        }
        let after = |prefix: &str| {
            banner
                .iter()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|rest| {
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
        };
        Node {
            addr: after("mxp node listening on ").unwrap().parse().unwrap(),
            key: after("public key: ").unwrap(),
            admin: after("admin endpoint on http://"),
            process,
            lines,
            stderr,
            banner,
        }
    }

    fn ping(&self, count: &str) {
        mxp(&[
            "ping",
            &format!("mxp://{}", self.addr),
            "--server-key",
            &self.key,
            "--carrier",
            "mxp",
            "-c",
            count,
        ])
        .success();
    }

    /// SIGTERM, then everything it printed after its banner.
    fn terminate(mut self) -> String {
        let pid = self.process.pid().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let status = self.process.wait(String::new);
        let out: Vec<String> = self.lines.iter().collect();
        let err = self.stderr.take().unwrap().join().unwrap_or_default();
        assert!(status.success(), "node exited {status}: {out:#?}\n{err}");
        out.join("\n")
    }
}

#[test]
fn mxp_admin_capture_start_and_stop_around_pings() {
    let dir = TempDir::new("cli");
    let node = Node::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--quic-listen",
            "off",
            "--admin",
            "127.0.0.1:0",
        ],
        dir.dir(),
    );
    let admin = node.admin.clone().expect("admin address printed");

    // A relative --out is taken from the command's directory.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxp"));
    cmd.args(["admin", &admin, "capture", "start", "--out", "pings.pcap"])
        .args(["--max-bytes", "10000000"])
        .current_dir(dir.dir());
    let started = json(&run_command(cmd, "mxp admin capture start".into()).success());
    let file = dir.path("pings.pcap");
    assert_eq!(started["state"], "recording", "{started}");
    assert_eq!(started["path"], path_str(&file));
    assert_eq!(started["max_bytes"], 10_000_000);

    node.ping("20");
    let status = json(&mxp(&["admin", &admin, "capture", "status"]).success());
    assert_eq!(status["state"], "recording", "{status}");

    let stopped = json(&mxp(&["admin", &admin, "capture", "stop"]).success());
    let summary: CaptureSummary = CaptureSummary {
        path: file.clone(),
        max_bytes: 10_000_000,
        packets: stopped["packets"].as_u64().unwrap(),
        sent: stopped["sent"].as_u64().unwrap(),
        received: stopped["received"].as_u64().unwrap(),
        bytes: stopped["bytes"].as_u64().unwrap(),
        dropped: stopped["dropped"].as_u64().unwrap(),
        truncated_by_limit: stopped["truncated_by_limit"].as_bool().unwrap(),
        error: None,
        duration_s: 0.0,
    };
    assert!(summary.received >= 20 && summary.sent >= 20, "{stopped}");
    assert_eq!(summary.dropped, 0, "{stopped}");
    if let Some(seen) = tshark(&file) {
        assert_eq!(seen.len() as u64, summary.packets, "{stopped}");
        let from_node = seen.iter().filter(|p| p.src == node.addr).count() as u64;
        let to_node = seen.iter().filter(|p| p.dst == node.addr).count() as u64;
        assert_eq!((from_node, to_node), (summary.sent, summary.received));
        assert!(seen.iter().all(|p| p.checksums_good), "{seen:?}");
    }

    // Refusals: one line, exit code 2.
    let again = mxp(&["admin", &admin, "capture", "stop"]);
    assert_eq!(again.code(), Some(2), "{again:#?}");
    assert!(
        again
            .one_error_line()
            .contains("no packet capture is running"),
        "{again:#?}"
    );
    let exists = mxp(&[
        "admin",
        &admin,
        "capture",
        "start",
        "--out",
        path_str(&file),
    ]);
    assert_eq!(exists.code(), Some(2), "{exists:#?}");
    let line = exists.one_error_line();
    assert!(
        line.contains("409") && line.contains(path_str(&file)),
        "{line}"
    );
    let missing = mxp(&["admin", &admin, "capture", "start"]);
    assert_eq!(missing.code(), Some(2), "{missing:#?}");
    assert!(missing.stderr.contains("--out"), "{missing:#?}");
    // Outside the node's capture directory (its working directory here).
    let outside = mxp(&[
        "admin",
        &admin,
        "capture",
        "start",
        "--out",
        "/etc/cron.d/mxp",
    ]);
    assert_eq!(outside.code(), Some(2), "{outside:#?}");
    let line = outside.one_error_line();
    assert!(
        line.contains("400") && line.contains("outside the capture directory"),
        "{line}"
    );
    assert!(!Path::new("/etc/cron.d/mxp").exists());

    node.terminate();
}

#[test]
fn node_capture_in_the_config_records_from_start_up_to_shutdown() {
    let dir = TempDir::new("config");
    // A file from an earlier run is moved aside, not overwritten.
    fs::write(dir.path("boot.pcap"), b"an earlier run").unwrap();
    fs::write(
        dir.path("mxp.toml"),
        "[node]\nlisten = \"127.0.0.1:0\"\nquic_listen = \"off\"\n\
         capture = \"boot.pcap\"\ncapture_max_bytes = 5_000_000\n",
    )
    .unwrap();
    let config = dir.path("mxp.toml");
    let node = Node::start(&["--config", path_str(&config)], dir.dir());
    let file = dir.path("boot.pcap");
    let announced = format!(
        "capturing packets to {} (up to 5000000 bytes)",
        file.display()
    );
    assert!(
        node.banner.iter().any(|l| l.starts_with(&announced)),
        "{:#?}",
        node.banner
    );
    assert_eq!(
        fs::read(dir.path("boot.pcap.prev")).unwrap(),
        b"an earlier run"
    );

    node.ping("5");
    let addr = node.addr;
    let printed = node.terminate();
    let line = printed
        .lines()
        .find(|l| l.starts_with(&format!("capture {}: ", file.display())))
        .unwrap_or_else(|| panic!("no capture line in {printed}"));
    let number_before = |word: &str| -> u64 {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || "(),".contains(c))
            .filter(|w| !w.is_empty())
            .collect();
        let i = words.iter().position(|w| *w == word).unwrap();
        words[i - 1].parse().unwrap()
    };
    let packets = number_before("packets");
    assert!(packets >= 10, "{line}");
    let Some(seen) = tshark(&file) else { return };
    assert_eq!(seen.len() as u64, packets, "{line}");
    assert_eq!(
        seen.iter().filter(|p| p.src == addr).count() as u64,
        number_before("sent"),
        "{line}"
    );
    assert_eq!(
        seen.iter().filter(|p| p.dst == addr).count() as u64,
        number_before("received"),
        "{line}"
    );
}
