//! Reading a capture file back with tshark, the tool operators read it
//! with. Without tshark the check is skipped with a line on stderr, unless
//! `MXP_REQUIRE_TSHARK` is set (CI installs tshark and sets it).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use super::process::run_command;
use super::tempdir::path_str;

/// One decoded packet, as tshark prints its fields.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Seen {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// IP header and UDP checksums both verified good.
    pub checksums_good: bool,
}

/// `tshark -r FILE` with checksum validation on, one line per packet:
/// source, destination and checksum verdicts. Fails the test if tshark
/// refuses the file; `None` (the check skipped, said on stderr) where
/// tshark is not installed, unless `MXP_REQUIRE_TSHARK` is set.
pub(crate) fn tshark(file: &Path) -> Option<Vec<Seen>> {
    let mut cmd = Command::new("tshark");
    cmd.args(["-n", "-r", path_str(file)])
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ])
        .args(["-T", "fields", "-E", "separator=,"])
        .args(["-e", "ip.src", "-e", "udp.srcport", "-e", "ip.dst"])
        .args(["-e", "udp.dstport", "-e", "ip.checksum.status"])
        .args(["-e", "udp.checksum.status"]);
    let which = Command::new("tshark").arg("--version").output();
    if !which.is_ok_and(|o| o.status.success()) {
        let why = "tshark is not installed: install it with \
                   `DEBIAN_FRONTEND=noninteractive apt-get install -y tshark`";
        // CI installs it and sets this, so there the check cannot go missing.
        assert!(std::env::var_os("MXP_REQUIRE_TSHARK").is_none(), "{why}");
        let _ = writeln!(std::io::stderr(), "skipping the tshark check: {why}");
        return None;
    }
    let out = run_command(cmd, format!("tshark -r {}", file.display())).success();
    let seen = out
        .stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            assert_eq!(f.len(), 6, "tshark line {line:?}");
            let addr = |ip: &str, port: &str| {
                format!("{ip}:{port}")
                    .parse::<SocketAddr>()
                    .unwrap_or_else(|e| panic!("tshark line {line:?}: {e}"))
            };
            // Wireshark's checksum status: 1 is "Good".
            Seen {
                src: addr(f[0], f[1]),
                dst: addr(f[2], f[3]),
                checksums_good: f[4] == "1" && f[5] == "1",
            }
        })
        .collect();
    Some(seen)
}
