//! Process-level tests of the identity commands: the real `starling` binary on
//! real data directories, and stock OpenSSL judging what it writes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const PASSWORD: &str = "correct horse battery staple";

fn starling(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .env("STARLING_PASSWORD", PASSWORD)
        .env_remove("STARLING_DATA_DIR")
        .output()
        .expect("the starling binary runs")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// Asserts failure and returns stderr, which must say something.
fn fails(output: Output) -> String {
    assert!(
        !output.status.success(),
        "command unexpectedly succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let stderr = String::from_utf8(output.stderr).expect("utf-8 stderr");
    assert!(
        stderr.starts_with("error: "),
        "errors start with `error: `, got {stderr:?}"
    );
    stderr
}

fn json(data_dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(starling(data_dir, &all))).expect("--json prints JSON")
}

fn create(data_dir: &Path, name: &str) -> Value {
    json(data_dir, &["account", "create", "--display-name", name])
}

fn certs(data_dir: &Path, out: &Path) -> PathBuf {
    ok(starling(
        data_dir,
        &["account", "certs", "--out", out.to_str().unwrap()],
    ));
    out.to_owned()
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed (scripts/test.sh installs it)")
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Every file and its bytes below `dir`, to prove a failed command wrote nothing.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(snapshot(&path));
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn create_show_and_stock_openssl_accepts_the_chain_and_crl() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = tmp.path().join("alice");
    let created = create(&alice, "Alice");
    let account_id = created["account_id"].as_str().unwrap();
    let device_id = created["device_id"].as_str().unwrap();
    assert_eq!(account_id.len(), 64);
    assert_ne!(account_id, device_id);

    let shown = json(&alice, &["account", "show"]);
    assert_eq!(shown["account_id"], account_id);
    assert_eq!(shown["device_id"], device_id);
    assert_eq!(shown["display_name"], "Alice");
    assert_eq!(shown["devices"][0]["this_device"], true);
    assert_eq!(shown["devices"][0]["revoked"], false);

    let out = certs(&alice, &tmp.path().join("certs"));
    let verify = openssl(&[
        "verify",
        "-CAfile",
        s(&out.join("account.crt.pem")),
        s(&out.join("device.crt.pem")),
    ]);
    assert!(
        verify.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let crl = openssl(&[
        "crl",
        "-in",
        s(&out.join("crl.pem")),
        "-CAfile",
        s(&out.join("account.crt.pem")),
        "-verify",
        "-noout",
    ]);
    assert!(
        crl.status.success(),
        "openssl crl -verify: {}",
        String::from_utf8_lossy(&crl.stderr)
    );
    let text = String::from_utf8(
        openssl(&[
            "x509",
            "-in",
            s(&out.join("account.crt.pem")),
            "-noout",
            "-text",
        ])
        .stdout,
    )
    .unwrap();
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains(&format!("CN = {account_id}")), "{text}");

    // Secrets are private to the user.
    use std::os::unix::fs::PermissionsExt;
    for key in ["account.key.pem", "device.key.pem"] {
        let mode = std::fs::metadata(alice.join("account").join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
}

#[test]
fn export_import_keeps_the_account_makes_a_new_device_that_can_revoke_the_old_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
    let original = create(&first, "Bob");
    let archive = tmp.path().join("bob.starling");
    ok(starling(
        &first,
        &["account", "export", "--out", s(&archive)],
    ));

    let imported = json(&second, &["account", "import", s(&archive)]);
    assert_eq!(imported["account_id"], original["account_id"]);
    assert_ne!(imported["device_id"], original["device_id"]);

    // The new device chains to the same account certificate, per OpenSSL and per us.
    let old_certs = certs(&first, &tmp.path().join("old"));
    let new_certs = certs(&second, &tmp.path().join("new"));
    assert_eq!(
        std::fs::read(old_certs.join("account.crt.pem")).unwrap(),
        std::fs::read(new_certs.join("account.crt.pem")).unwrap()
    );
    let verify = openssl(&[
        "verify",
        "-CAfile",
        s(&old_certs.join("account.crt.pem")),
        s(&new_certs.join("device.crt.pem")),
    ]);
    assert!(verify.status.success());

    // The new device knows the old one and revokes it.
    let old_device = original["device_id"].as_str().unwrap();
    let shown = json(&second, &["account", "show"]);
    assert_eq!(shown["devices"].as_array().unwrap().len(), 2);
    let revoked = json(&second, &["device", "revoke", old_device]);
    assert_eq!(revoked["crl_number"], 2);
    let shown = json(&second, &["account", "show"]);
    let old_entry = shown["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device_id"] == old_device)
        .unwrap()
        .clone();
    assert_eq!(old_entry["revoked"], true);

    // Stock OpenSSL now refuses the old device and still accepts the new one.
    let after = certs(&second, &tmp.path().join("after"));
    let crl_check = |device: &Path| {
        openssl(&[
            "verify",
            "-crl_check",
            "-CRLfile",
            s(&after.join("crl.pem")),
            "-CAfile",
            s(&after.join("account.crt.pem")),
            s(device),
        ])
    };
    let refused = crl_check(&old_certs.join("device.crt.pem"));
    assert!(!refused.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(said.contains("certificate revoked"), "{said}");
    assert!(crl_check(&after.join("device.crt.pem")).status.success());

    // And so does our verifier.
    let ours = starling(
        &second,
        &[
            "cert",
            "verify",
            s(&old_certs.join("device.crt.pem")),
            "--account",
            s(&after.join("account.crt.pem")),
            "--crl",
            s(&after.join("crl.pem")),
        ],
    );
    assert!(fails(ours).contains("revoked"));

    // Refusals: this device, an unknown device, a second revocation.
    let this_device = imported["device_id"].as_str().unwrap();
    assert!(fails(starling(&second, &["device", "revoke", this_device])).contains("this device"));
    assert!(
        fails(starling(&second, &["device", "revoke", &"0".repeat(64)]))
            .contains("not a device of account")
    );
    assert!(fails(starling(&second, &["device", "revoke", old_device])).contains("already revoked"));
}

#[test]
fn bad_archives_fail_clearly_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("source");
    create(&source, "Carol");
    let archive = tmp.path().join("carol.starling");
    ok(starling(
        &source,
        &["account", "export", "--out", s(&archive)],
    ));
    let bytes = std::fs::read(&archive).unwrap();
    let target = tmp.path().join("target");

    let import_with = |name: &str, content: &[u8], password: Option<&str>| {
        let path = tmp.path().join(name);
        std::fs::write(&path, content).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_starling"));
        command
            .arg("--data-dir")
            .arg(&target)
            .args(["account", "import", s(&path)]);
        command.env("STARLING_PASSWORD", password.unwrap_or(PASSWORD));
        let stderr = fails(command.output().unwrap());
        assert!(
            !target.join("account").exists(),
            "{name}: nothing may be written"
        );
        stderr
    };
    assert!(import_with("wrong-password", &bytes, Some("not it")).contains("wrong password"));
    assert!(import_with("truncated", &bytes[..30], None).contains("truncated"));
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x10;
    assert!(import_with("flipped", &flipped, None).contains("corrupted"));
    let mut future = bytes.clone();
    future[8..10].copy_from_slice(&7u16.to_be_bytes());
    assert!(import_with("future", &future, None).contains("format version 7"));
    assert!(
        import_with("garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n", None)
            .contains("not a Starling account archive")
    );

    // Export refuses to overwrite; passwords are required.
    let before = std::fs::read(&archive).unwrap();
    assert!(fails(starling(
        &source,
        &["account", "export", "--out", s(&archive)]
    ))
    .contains("already exists"));
    assert_eq!(std::fs::read(&archive).unwrap(), before);
    let mut no_password = Command::new(env!("CARGO_BIN_EXE_starling"));
    no_password
        .arg("--data-dir")
        .arg(&source)
        .args(["account", "export", "--out", s(&tmp.path().join("x"))])
        .env_remove("STARLING_PASSWORD");
    assert!(fails(no_password.output().unwrap()).contains("no password given"));

    // A password file works in place of the environment variable.
    let password_file = tmp.path().join("password");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    let mut with_file = Command::new(env!("CARGO_BIN_EXE_starling"));
    with_file.arg("--data-dir").arg(&target).args([
        "--json",
        "account",
        "import",
        s(&archive),
        "--password-file",
        s(&password_file),
    ]);
    with_file.env_remove("STARLING_PASSWORD");
    let imported: Value = serde_json::from_str(&ok(with_file.output().unwrap())).unwrap();
    assert_eq!(imported["display_name"], "Carol");
}

#[test]
fn create_over_an_existing_account_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dave");
    let created = create(&dir, "Dave");
    let before = snapshot(&dir);
    let stderr = fails(starling(
        &dir,
        &["account", "create", "--display-name", "Mallory"],
    ));
    assert!(
        stderr.contains("already exists")
            && stderr.contains(created["account_id"].as_str().unwrap()),
        "{stderr}"
    );
    let archive = tmp.path().join("a.starling");
    ok(starling(&dir, &["account", "export", "--out", s(&archive)]));
    assert!(fails(starling(&dir, &["account", "import", s(&archive)])).contains("already exists"));
    assert_eq!(snapshot(&dir), before);
}

#[test]
fn chain_verification_refuses_foreign_expired_and_malformed_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let (erin, frank) = (tmp.path().join("erin"), tmp.path().join("frank"));
    create(&erin, "Erin");
    create(&frank, "Frank");
    let e = certs(&erin, &tmp.path().join("e"));
    let f = certs(&frank, &tmp.path().join("f"));
    let verify = |device: &Path, account: &Path, extra: &[&str]| {
        let mut args = vec!["cert", "verify", s(device), "--account", s(account)];
        args.extend_from_slice(extra);
        starling(&erin, &args)
    };
    ok(verify(
        &e.join("device.crt.pem"),
        &e.join("account.crt.pem"),
        &["--crl", s(&e.join("crl.pem"))],
    ));

    let foreign = fails(verify(
        &f.join("device.crt.pem"),
        &e.join("account.crt.pem"),
        &[],
    ));
    assert!(foreign.contains("names account"), "{foreign}");
    let foreign_crl = fails(verify(
        &e.join("device.crt.pem"),
        &e.join("account.crt.pem"),
        &["--crl", s(&f.join("crl.pem"))],
    ));
    assert!(foreign_crl.contains("revocation list"), "{foreign_crl}");

    // Eleven years on, the device certificate (valid ten) has expired.
    let eleven_years = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 11 * 365 * 86_400)
        .to_string();
    let expired = fails(verify(
        &e.join("device.crt.pem"),
        &e.join("account.crt.pem"),
        &["--at", &eleven_years],
    ));
    assert!(expired.contains("expired"), "{expired}");

    let garbage = tmp.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(fails(verify(&garbage, &e.join("account.crt.pem"), &[])).contains("device certificate"));
    std::fs::write(&garbage, "hello").unwrap();
    assert!(fails(verify(&e.join("device.crt.pem"), &garbage, &[])).contains("PEM"));
    // An account certificate where a device certificate belongs is refused by shape.
    assert!(fails(verify(
        &e.join("account.crt.pem"),
        &e.join("account.crt.pem"),
        &[]
    ))
    .contains("basicConstraints"));
}

/// A reader that goes away before the output is written (`… | head -1`)
/// ends the command quietly with success, never with a panic.
#[test]
fn output_to_a_closed_pipe_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("alice");
    create(&data, "alice");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_starling"))
        .arg("--data-dir")
        .arg(&data)
        .args(["--json", "account", "show"])
        .env_remove("STARLING_DATA_DIR")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Closed before the command can have written anything.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
}
