//! Node key files: `mxp keygen --out DIR` writes them, `mxp serve --key`
//! reads them, and `--server-key` takes the public half on the command line.
//!
//! A node's static key is its identity: clients pin its public half, so
//! losing or silently replacing the secret breaks every client, and leaking
//! it lets anyone impersonate the node. Hence: the secret file is created
//! with mode 0600 (never readable by others, not even for a moment),
//! existing keys are not overwritten without `--force`, and no error message
//! ever quotes the contents of a secret file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use mxp::proto::crypto::handshake::KEY_LEN;
use mxp::proto::{Keypair, PublicKey};

use super::CliError;

/// Name of the secret key file in the `--out` directory.
pub(crate) const KEY_FILE: &str = "node.key";
/// Name of the public key file in the `--out` directory: one line, the form
/// `--server-key` takes, so `--server-key "$(cat DIR/node.pub)"` works.
pub(crate) const PUB_FILE: &str = "node.pub";

/// Generates a node keypair into `dir` (created if missing): `node.key`
/// (64 hex digits and a newline, mode 0600) and `node.pub` (the public key,
/// one line). Returns the public key so the caller can print it.
///
/// An existing `node.key` is refused unless `force`, because replacing it
/// changes the node's identity under every client that pinned it. With
/// `force` the new key is written to a fresh 0600 file and renamed over the
/// old one, so a crash leaves either the old key or the new one.
pub(crate) fn generate(dir: &Path, force: bool) -> Result<PublicKey, CliError> {
    fs::create_dir_all(dir)
        .map_err(|e| CliError::Failed(format!("cannot create directory {}: {e}", dir.display())))?;
    let keypair = Keypair::generate();
    let mut secret = hex(keypair.secret_bytes());
    secret.push('\n');

    let key_path = dir.join(KEY_FILE);
    if force {
        let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", std::process::id()));
        let _ = fs::remove_file(&tmp); // a leftover from a crashed run
        write_secret(&tmp, &secret)
            .and_then(|()| fs::rename(&tmp, &key_path))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                CliError::Failed(format!("cannot write {}: {e}", key_path.display()))
            })?;
    } else {
        write_secret(&key_path, &secret).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                CliError::Usage(format!(
                    "{} already exists; refusing to replace a node's key (clients pin its \
                     public key). Use --force to replace it, or choose another --out directory",
                    key_path.display()
                ))
            } else {
                CliError::Failed(format!("cannot write {}: {e}", key_path.display()))
            }
        })?;
    }

    let public = keypair.public();
    let pub_path = dir.join(PUB_FILE);
    fs::write(&pub_path, format!("{public}\n"))
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", pub_path.display())))?;
    Ok(public)
}

/// Creates `path` (which must not exist) with mode 0600 and writes the
/// secret to it; removes the file again if writing fails.
fn write_secret(path: &Path, secret: &str) -> io::Result<()> {
    // The mode applies at creation, so the secret is never in a file others
    // can read; the umask can only narrow it, and `set_permissions` then makes
    // it exactly 0600 whatever the umask was.
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    let written = file
        .set_permissions(fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(secret.as_bytes()))
        .and_then(|()| file.sync_all());
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// Reads a node's secret key file (as `mxp keygen` writes it) and rebuilds
/// its keypair.
///
/// Errors are usage errors naming the file and never quoting its contents.
/// A file that group or other users can access still loads, with a warning,
/// so a node is not kept down by a permissions slip on a host where that is
/// acceptable.
pub(crate) fn load_keypair(path: &Path) -> Result<Keypair, CliError> {
    let shown = path.display();
    let usage = |problem: String| CliError::Usage(format!("key file {shown}: {problem}"));
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => usage(
            "does not exist (create one with `mxp keygen --out DIR`, or leave out the key \
             to run with an ephemeral one)"
                .to_owned(),
        ),
        _ => usage(format!("cannot read: {e}")),
    })?;
    if !meta.is_file() {
        return Err(usage("not a regular file".to_owned()));
    }
    if path.extension().is_some_and(|ext| ext == "pub") {
        return Err(usage(format!(
            "this is a public key file; a node needs its secret key ({KEY_FILE}) beside it"
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %shown,
            mode = format_args!("{mode:o}"),
            "key file is accessible by other users; restrict it with `chmod 600`"
        );
    }
    let not_a_key = || {
        usage(format!(
            "not a node secret key: expected {} hexadecimal digits",
            2 * KEY_LEN
        ))
    };
    // A key file is 65 bytes; refuse to read something else entirely.
    if meta.len() > 1024 {
        return Err(not_a_key());
    }
    let bytes = fs::read(path).map_err(|e| usage(format!("cannot read: {e}")))?;
    let secret = parse_secret(&bytes).ok_or_else(not_a_key)?;
    Ok(Keypair::from_secret(secret))
}

/// Decodes 64 hex digits with optional surrounding whitespace.
fn parse_secret(bytes: &[u8]) -> Option<[u8; KEY_LEN]> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() != 2 * KEY_LEN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; KEY_LEN];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a `--server-key` value: the server's public key as 64 hex digits
/// (the one line of its `node.pub`). The error names the flag, because a
/// client command has several arguments that could be wrong.
pub(crate) fn parse_public_key(s: &str) -> Result<PublicKey, CliError> {
    if s.trim().is_empty() {
        return Err(CliError::Usage(
            "--server-key: empty; pass the server's public key (the line in its node.pub)"
                .to_owned(),
        ));
    }
    s.parse().map_err(|e| {
        let hint = if Path::new(s).is_file() {
            format!(" (that is a file; pass its contents: --server-key \"$(cat {s})\")")
        } else {
            String::new()
        };
        CliError::Usage(format!("--server-key: {e}{hint}"))
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("mxp-keygen-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn usage_message(e: CliError) -> String {
        match e {
            CliError::Usage(m) => m,
            CliError::Failed(m) => panic!("expected a usage error, got a failure: {m}"),
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn generated_keys_load_back() {
        let dir = TempDir::new("round-trip");
        let out = dir.0.join("nested/keys"); // created on demand
        let public = generate(&out, false).unwrap();

        let key_text = fs::read_to_string(out.join(KEY_FILE)).unwrap();
        assert_eq!(key_text.len(), 65);
        assert!(key_text.ends_with('\n'));
        let pub_text = fs::read_to_string(out.join(PUB_FILE)).unwrap();
        assert_eq!(pub_text, format!("{public}\n"));
        assert_eq!(parse_public_key(&pub_text).unwrap(), public);

        let keypair = load_keypair(&out.join(KEY_FILE)).unwrap();
        assert_eq!(keypair.public(), public);
    }

    #[test]
    fn the_secret_file_is_private() {
        let dir = TempDir::new("mode");
        generate(&dir.0, false).unwrap();
        assert_eq!(mode(&dir.0.join(KEY_FILE)), 0o600);

        // Replacing a key that had lax permissions leaves a private file.
        fs::set_permissions(dir.0.join(KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        generate(&dir.0, true).unwrap();
        assert_eq!(mode(&dir.0.join(KEY_FILE)), 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn an_existing_key_is_kept_unless_forced() {
        let dir = TempDir::new("overwrite");
        let first = generate(&dir.0, false).unwrap();
        let before = fs::read(dir.0.join(KEY_FILE)).unwrap();

        let message = usage_message(generate(&dir.0, false).unwrap_err());
        assert!(message.contains("already exists"), "{message}");
        assert!(message.contains("--force"), "{message}");
        assert_eq!(fs::read(dir.0.join(KEY_FILE)).unwrap(), before);
        assert_eq!(load_keypair(&dir.0.join(KEY_FILE)).unwrap().public(), first);

        let second = generate(&dir.0, true).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            load_keypair(&dir.0.join(KEY_FILE)).unwrap().public(),
            second
        );
        assert_eq!(
            fs::read_to_string(dir.0.join(PUB_FILE)).unwrap(),
            format!("{second}\n")
        );
    }

    #[test]
    fn bad_key_files_are_refused_without_quoting_them() {
        let dir = TempDir::new("corrupt");
        fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join(KEY_FILE);

        let secretish = "7f".repeat(31) + "zz"; // right length, not hex
        let short = "ab".repeat(31); // 62 digits
        for content in [secretish.as_str(), short.as_str(), "", "\u{0}\u{1}"] {
            fs::write(&path, content).unwrap();
            let message = usage_message(load_keypair(&path).unwrap_err());
            assert!(
                message.starts_with(&format!("key file {}: ", path.display())),
                "{message}"
            );
            assert!(message.contains("64 hexadecimal digits"), "{message}");
            if !content.is_empty() {
                assert!(
                    !message.contains(content),
                    "error echoes the file: {message}"
                );
            }
        }

        let missing = usage_message(load_keypair(&dir.0.join("absent.key")).unwrap_err());
        assert!(missing.contains("does not exist"), "{missing}");

        let pub_path = dir.0.join(PUB_FILE);
        fs::write(&pub_path, "11".repeat(32)).unwrap();
        let wrong_half = usage_message(load_keypair(&pub_path).unwrap_err());
        assert!(wrong_half.contains("public key file"), "{wrong_half}");

        let not_file = usage_message(load_keypair(&dir.0).unwrap_err());
        assert!(not_file.contains("not a regular file"), "{not_file}");
    }

    #[test]
    fn a_readable_key_file_still_loads() {
        let dir = TempDir::new("lax");
        let public = generate(&dir.0, false).unwrap();
        let path = dir.0.join(KEY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        // Loads (with a warning logged), CRLF and all.
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.trim_end().to_owned() + "\r\n").unwrap();
        assert_eq!(load_keypair(&path).unwrap().public(), public);
    }

    #[test]
    fn server_key_errors_name_the_flag() {
        let key = "0a".repeat(32);
        assert_eq!(parse_public_key(&key).unwrap(), PublicKey([0x0a; 32]));
        assert_eq!(
            parse_public_key(&format!(" {key}\n")).unwrap(),
            PublicKey([0x0a; 32])
        );
        for bad in ["", "abc", &"0a".repeat(33)] {
            let message = usage_message(parse_public_key(bad).unwrap_err());
            assert!(message.starts_with("--server-key: "), "{message}");
        }
        let dir = TempDir::new("pubfile");
        let public = generate(&dir.0, false).unwrap();
        let path = dir.0.join(PUB_FILE);
        let message = usage_message(parse_public_key(path.to_str().unwrap()).unwrap_err());
        assert!(message.contains("$(cat "), "{message}");
        assert_ne!(public, PublicKey([0; 32]));
    }
}
