//! The identity subcommands: each reads the data dir, calls the protocol
//! crate's pure functions, writes atomically and prints text or JSON.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use serde_json::json;
use starling_protocol::{
    limits::{ARCHIVE_BYTES_MAX, DISPLAY_NAME_BYTES_MAX, PEM_BYTES_MAX},
    verify_device_chain, AccountArchive, AccountCert, DeviceCert, DeviceId, KdfParams,
    RevocationList,
};
use zeroize::Zeroizing;

use starling_protocol::AccountIdentity;

use crate::data_dir::{write_atomic, DataDir};

/// What every command needs.
pub struct Context {
    pub data_dir: DataDir,
    pub json: bool,
}

impl Context {
    /// Prints `value` (with `--json`) or `text()` on standard output.
    pub(crate) fn print(&self, value: serde_json::Value, text: impl FnOnce() -> String) {
        if self.json {
            print_out(&format!("{value:#}"));
        } else {
            print_out(&text());
        }
    }
}

/// Writes `text` and a newline to standard output. A reader that went away
/// (`starling messages … | head -1`) ends the command quietly with success,
/// as it does for other Unix tools; `println!` would panic there.
pub(crate) fn print_out(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let written = writeln!(out, "{text}").and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: writing to standard output: {e}");
            std::process::exit(1);
        }
    }
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Reads the password from `file` (first line) or `$STARLING_PASSWORD`.
pub fn read_password(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    let password = match file {
        Some(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading password file {}", path.display()))?,
            );
            Zeroizing::new(text.lines().next().unwrap_or("").to_owned())
        }
        None => match std::env::var("STARLING_PASSWORD") {
            Ok(value) => Zeroizing::new(value),
            Err(_) => bail!("no password given: use --password-file FILE or set STARLING_PASSWORD"),
        },
    };
    if password.is_empty() {
        bail!("the password is empty; an archive holds the account's secret key, so it needs one");
    }
    Ok(password)
}

fn identity_json(ctx: &Context, account: &AccountIdentity) -> serde_json::Value {
    json!({
        "account_id": account.account_cert.id(),
        "device_id": account.device_cert.id(),
        "display_name": account.display_name,
        "data_dir": ctx.data_dir.account_dir(),
    })
}

pub fn account_create(ctx: &Context, display_name: &str) -> anyhow::Result<()> {
    if display_name.trim().is_empty() || display_name.len() > DISPLAY_NAME_BYTES_MAX {
        bail!(
            "a display name is 1 to {DISPLAY_NAME_BYTES_MAX} bytes; got {}",
            display_name.len()
        );
    }
    ctx.data_dir.ensure_no_account()?;
    let account =
        AccountIdentity::generate(display_name, SystemTime::now(), &mut rand_core::OsRng)?;
    ctx.data_dir.create(&account)?;
    tracing::info!(account = %account.account_cert.id(), device = %account.device_cert.id(), "account created");
    ctx.print(identity_json(ctx, &account), || {
        format!(
            "created account {}\nthis device   {}",
            account.account_cert.id(),
            account.device_cert.id()
        )
    });
    Ok(())
}

pub fn account_show(ctx: &Context) -> anyhow::Result<()> {
    let account = ctx.data_dir.load()?;
    let devices = account.devices();
    let mut value = identity_json(ctx, &account);
    value["crl_number"] = json!(account.crl.number());
    value["devices"] = devices
        .iter()
        .map(|d| {
            json!({
                "device_id": d.cert.id(),
                "this_device": d.this_device,
                "revoked": d.revoked,
                "serial": hex_string(d.cert.serial()),
                "not_after_unix": unix_seconds(d.cert.not_after()),
            })
        })
        .collect();
    ctx.print(value, || {
        let mut text = format!(
            "account       {}\ndisplay name  {}\nthis device   {}\ndevices ({}):\n",
            account.account_cert.id(),
            account.display_name,
            account.device_cert.id(),
            devices.len()
        );
        for d in &devices {
            let state = match (d.this_device, d.revoked) {
                (true, true) => "this device, REVOKED",
                (true, false) => "this device",
                (false, true) => "revoked",
                (false, false) => "active",
            };
            text.push_str(&format!("  {}  {state}\n", d.cert.id()));
        }
        text.trim_end().to_owned()
    });
    Ok(())
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn account_certs(ctx: &Context, out: &Path) -> anyhow::Result<()> {
    let account = ctx.data_dir.load()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let files = [
        ("account.crt.pem", account.account_cert.to_pem()),
        ("device.crt.pem", account.device_cert.to_pem()),
        ("crl.pem", account.crl.to_pem()),
    ];
    for (name, pem) in &files {
        write_atomic(&out.join(name), pem.as_bytes(), 0o644)?;
    }
    let paths: Vec<_> = files.iter().map(|(name, _)| out.join(name)).collect();
    ctx.print(
        json!({ "account_cert": paths[0], "device_cert": paths[1], "crl": paths[2] }),
        || {
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join("\n")
        },
    );
    Ok(())
}

pub fn account_export(ctx: &Context, out: &Path, password: &str) -> anyhow::Result<()> {
    let account = ctx.data_dir.load()?;
    if out.exists() {
        bail!(
            "{} already exists; export never overwrites a file",
            out.display()
        );
    }
    let sealed = account.to_archive().seal(
        password.as_bytes(),
        KdfParams::DEFAULT,
        &mut rand_core::OsRng,
    )?;
    write_atomic(out, &sealed, 0o600)?;
    ctx.print(json!({ "account_id": account.account_cert.id(), "archive": out, "devices": account.known_devices.len() }), || {
        let count = account.known_devices.len();
        let noun = if count == 1 { "device" } else { "devices" };
        format!("exported account {} ({count} {noun}) to {}", account.account_cert.id(), out.display())
    });
    Ok(())
}

pub fn account_import(ctx: &Context, file: &Path, password: &str) -> anyhow::Result<()> {
    ctx.data_dir.ensure_no_account()?;
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    if size > ARCHIVE_BYTES_MAX as u64 {
        bail!(
            "{} is {size} bytes; an account archive is at most {ARCHIVE_BYTES_MAX}",
            file.display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let archive = AccountArchive::open(&bytes, password.as_bytes())
        .with_context(|| format!("opening {}", file.display()))?;
    let account = AccountIdentity::from_archive(archive, SystemTime::now(), &mut rand_core::OsRng)?;
    ctx.data_dir.create(&account)?;
    tracing::info!(account = %account.account_cert.id(), device = %account.device_cert.id(), "account imported");
    ctx.print(identity_json(ctx, &account), || {
        format!(
            "imported account {}\nthis device     {} (new)",
            account.account_cert.id(),
            account.device_cert.id()
        )
    });
    Ok(())
}

pub fn device_revoke(ctx: &Context, device_id: &str) -> anyhow::Result<()> {
    let device_id: DeviceId = device_id.parse().context("DEVICE_ID")?;
    let mut account = ctx.data_dir.load()?;
    let crl = account.revocation_of(device_id, SystemTime::now())?;
    ctx.data_dir.store_crl(&crl)?;
    account.adopt_crl(crl)?;
    tracing::info!(device = %device_id, crl_number = account.crl.number(), "device revoked");
    ctx.print(
        json!({ "device_id": device_id, "revoked": true, "crl_number": account.crl.number() }),
        || {
            format!(
                "revoked device {device_id} (CRL number {})",
                account.crl.number()
            )
        },
    );
    Ok(())
}

fn read_pem(path: &Path) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if size > PEM_BYTES_MAX as u64 {
        bail!(
            "{} is {size} bytes; a PEM file is at most {PEM_BYTES_MAX}",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

pub fn cert_verify(
    ctx: &Context,
    device: &Path,
    account: &Path,
    crl: Option<&Path>,
    at: Option<u64>,
) -> anyhow::Result<()> {
    let device_cert = DeviceCert::from_pem(&read_pem(device)?)
        .with_context(|| format!("device certificate {}", device.display()))?;
    let account_cert = AccountCert::from_pem(&read_pem(account)?)
        .with_context(|| format!("account certificate {}", account.display()))?;
    let crl = crl
        .map(|path| {
            RevocationList::from_pem(&read_pem(path)?)
                .with_context(|| format!("CRL {}", path.display()))
        })
        .transpose()?;
    let now = at
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or_else(SystemTime::now);
    let verified = verify_device_chain(&device_cert, &account_cert, crl.as_ref(), now)
        .context("chain verification failed")?;
    ctx.print(json!({ "account_id": verified.account_id, "device_id": verified.device_id, "valid": true }), || {
        format!("ok: device {} speaks for account {}", verified.device_id, verified.account_id)
    });
    Ok(())
}

pub fn status(ctx: &Context) -> anyhow::Result<()> {
    let client = crate::client::ApiClient::discover(ctx.data_dir.root())?;
    let status = client.get("/v1/status")?;
    ctx.print(status.clone(), || {
        format!(
            "account       {}\ndisplay name  {}\nthis device   {}\napi           {}\nlisten        {}\npid           {}\nclock         {}",
            status["account_id"].as_str().unwrap_or("?"),
            status["display_name"].as_str().unwrap_or("?"),
            status["device_id"].as_str().unwrap_or("?"),
            status["api"].as_str().unwrap_or("?"),
            status["listen"].as_str().unwrap_or("?"),
            status["pid"],
            clock_line(&status["clock"]),
        ) + &unhealthy_lines(&status["conversations_unhealthy"])
    });
    Ok(())
}

/// One `status` line per conversation that cannot write.
fn unhealthy_lines(list: &serde_json::Value) -> String {
    let mut lines = String::new();
    for item in list.as_array().into_iter().flatten() {
        lines.push_str(&format!(
            "\nWARNING: conversation {} cannot write ({}): {}",
            item["conversation"].as_str().unwrap_or("?"),
            item["reason"].as_str().unwrap_or("?"),
            item["detail"].as_str().unwrap_or("")
        ));
    }
    lines
}

/// The `clock` line of `status`: the warning when there is one.
fn clock_line(clock: &serde_json::Value) -> String {
    if let Some(warning) = clock["warning"].as_str() {
        return format!("WARNING: {warning}");
    }
    match (clock["offset_seconds"].as_i64(), clock["peers"].as_u64()) {
        (Some(offset), Some(peers)) => {
            format!("{offset:+} s against the median of {peers} connected peer(s)")
        }
        _ => "no connected peer has sent a clock reading yet".to_owned(),
    }
}

/// Standard input and output as one stream.
struct Stdio {
    stdin: std::io::Stdin,
    stdout: std::io::Stdout,
}

impl std::io::Read for Stdio {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stdin.read(buf)
    }
}

impl std::io::Write for Stdio {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stdout.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stdout.flush()
    }
}

pub fn git_upload_pack(repository: &Path) -> anyhow::Result<()> {
    let repo = git2::Repository::open(repository)
        .with_context(|| format!("opening repository {}", repository.display()))?;
    let mut stdio = Stdio {
        stdin: std::io::stdin(),
        stdout: std::io::stdout(),
    };
    let served = starling_actors::git_wire::server::serve_upload_pack(&repo, &mut stdio)?;
    tracing::info!(?served, "upload-pack session ended");
    Ok(())
}
