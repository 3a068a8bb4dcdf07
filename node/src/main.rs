//! `starling`: the Starling node binary.
//!
//! Offline subcommands manage the identity in a data directory (create, show,
//! export, import, revoke, certificates, chain verification). `starling up`
//! runs the daemon; the other subcommands are clients of its local API.

mod api;
mod client;
mod commands;
mod config;
mod contact_commands;
mod contacts_api;
mod daemon;
mod data_dir;
mod discovery_commands;
mod events_api;
mod events_command;
mod swarm_commands;
mod swarm_ops_api;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// A peer-to-peer, end-to-end encrypted communication node.
#[derive(Parser)]
#[command(name = "starling", version, about)]
struct Cli {
    /// Data directory [default: $XDG_DATA_HOME/starling, or ~/.local/share/starling].
    #[arg(long, global = true, env = "STARLING_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print machine-readable JSON (snake_case keys) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node daemon until SIGINT or SIGTERM.
    Up {
        /// TCP address for the local API (port 0 picks a free one) [default: 127.0.0.1:7421].
        #[arg(long, value_name = "ADDR")]
        api: Option<std::net::SocketAddr>,
        /// UDP address for QUIC (port 0 picks a free one) [default: 0.0.0.0:7420].
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Config file [default: DATA_DIR/starling.toml, if present].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// No LAN discovery (multicast DNS).
        #[arg(long)]
        no_mdns: bool,
        /// No internet discovery (mainline DHT).
        #[arg(long)]
        no_dht: bool,
        /// DHT bootstrap node HOST:PORT (repeat or separate by commas) [default: public nodes].
        #[arg(long, value_name = "HOST:PORT", value_delimiter = ',')]
        dht_bootstrap: Vec<String>,
    },
    /// Ask the running daemon who it is and where it listens.
    Status,
    /// Tell the daemon where other devices are.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Group conversations (swarms).
    #[command(subcommand)]
    Swarm(SwarmCommand),
    /// Contacts: one-to-one conversations with other accounts, and blocks.
    #[command(subcommand)]
    Contact(contact_commands::ContactCommand),
    /// Send a text message to a conversation.
    Send {
        /// The conversation id.
        conversation: String,
        /// The text.
        text: String,
        /// The id of the message this one answers.
        #[arg(long, value_name = "ID")]
        reply_to: Option<String>,
    },
    /// Replace the text of one of your messages.
    Edit {
        /// The conversation id.
        conversation: String,
        /// The message id.
        message: String,
        /// The new text.
        text: String,
    },
    /// Delete one of your messages.
    Delete {
        /// The conversation id.
        conversation: String,
        /// The message id.
        message: String,
    },
    /// React to a message (an emoji).
    React {
        /// The conversation id.
        conversation: String,
        /// The message id.
        message: String,
        /// The reaction.
        reaction: String,
    },
    /// List a conversation's messages with edits, deletions and reactions
    /// applied (text: oldest first; JSON: newest first).
    Messages {
        /// The conversation id.
        conversation: String,
        /// How many of the newest.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Only messages older than this message id (the next page).
        #[arg(long, value_name = "ID")]
        before: Option<String>,
    },
    /// Follow the daemon's event stream: one line per event (JSON lines with --json).
    Events,
    /// Serve a repository to stock git over stdin/stdout with Starling's
    /// upload-pack, e.g. `git clone -u 'starling git-upload-pack' file:///path/to/swarm.git`.
    #[command(name = "git-upload-pack")]
    GitUploadPack {
        /// The (bare) repository.
        repository: PathBuf,
    },
    /// Run DHT nodes for a private network (tests, offline sites) until killed.
    #[command(name = "dht-bootstrap", hide = true)]
    DhtBootstrap {
        /// IPv4 address and UDP port of the first node (the others bootstrap from it).
        #[arg(long, value_name = "IP:PORT")]
        listen: std::net::SocketAddrV4,
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// Advertise one mDNS claim (true or false) until killed, to check that
    /// peers refuse a false one.
    #[command(name = "mdns-advertise", hide = true)]
    MdnsAdvertise {
        /// The account id to claim.
        #[arg(long)]
        account: String,
        /// The device id to claim.
        #[arg(long)]
        device: String,
        /// The UDP port to claim.
        #[arg(long)]
        port: u16,
    },
    /// Manage this node's account.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Manage the account's devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Work with certificates.
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create a new account with this node as its first device.
    Create {
        /// The name others see.
        #[arg(long)]
        display_name: String,
    },
    /// Show the account, this device and every known device.
    Show,
    /// Write account.crt.pem, device.crt.pem and crl.pem into DIR.
    Certs {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Write an encrypted archive of the account (keys included) to FILE.
    Export {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// Restore an account from an archive, as a new device of it.
    Import {
        /// The archive written by `account export`.
        file: PathBuf,
        #[command(flatten)]
        password: PasswordArgs,
    },
}

#[derive(Subcommand)]
enum PeerCommand {
    /// Keep a connection to a device: ACCOUNT_ID@HOST:PORT (the account its
    /// certificate chain must prove).
    Add {
        /// ACCOUNT_ID@HOST:PORT.
        peer: String,
    },
}

#[derive(Subcommand)]
enum SwarmCommand {
    /// Create a conversation with this account as admin.
    Create {
        /// Its title.
        #[arg(long)]
        title: Option<String>,
        /// one-to-one, admin-invites-only, invites-only (default) or public.
        #[arg(long)]
        mode: Option<String>,
    },
    /// List this account's conversations.
    List,
    /// Invite an account.
    Invite {
        /// The conversation id.
        conversation: String,
        /// The account to invite.
        account_id: String,
    },
    /// Remove a member or withdraw an invitation (admins).
    Remove {
        /// The conversation id.
        conversation: String,
        /// The account to remove.
        account_id: String,
    },
    /// Leave a conversation.
    Leave {
        /// The conversation id.
        conversation: String,
    },
    /// List invitations received.
    Invites,
    /// Accept an invitation: fetch the conversation and join it.
    Join {
        /// The conversation id.
        conversation: String,
    },
    /// List members with their roles.
    Members {
        /// The conversation id.
        conversation: String,
    },
    /// Ban an account (admins): votes, and bans once a majority of the other admins voted.
    Ban {
        /// The conversation id.
        conversation: String,
        /// The account to ban.
        account_id: String,
    },
    /// Lift a ban (admins): votes, and lifts it once a majority of the other admins voted.
    Unban {
        /// The conversation id.
        conversation: String,
        /// The account to unban.
        account_id: String,
    },
    /// Show the conversation profile, or change its title/description (admins).
    Profile {
        /// The conversation id.
        conversation: String,
        /// The new title.
        #[arg(long)]
        title: Option<String>,
        /// The new description.
        #[arg(long)]
        description: Option<String>,
    },
    /// Write the allowed-signers file for `git verify-commit`.
    AllowedSigners {
        /// The conversation id.
        conversation: String,
        /// Where to write it.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Revoke another device of this account (adds it to the account's CRL).
    Revoke {
        /// The device id, as `account show` prints it.
        device_id: String,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Verify that a device certificate speaks for an account.
    Verify {
        /// The device certificate (PEM).
        device: PathBuf,
        /// The account certificate (PEM).
        #[arg(long, value_name = "FILE")]
        account: PathBuf,
        /// The account's CRL (PEM), to check revocation.
        #[arg(long, value_name = "FILE")]
        crl: Option<PathBuf>,
        /// Verify as of this time (seconds since the Unix epoch) instead of now.
        #[arg(long, value_name = "UNIX_SECONDS")]
        at: Option<u64>,
    },
}

/// Where a password comes from. Never a command-line argument: those leak
/// into shell history and `ps`.
#[derive(Args)]
struct PasswordArgs {
    /// Read the password from FILE (first line); otherwise from $STARLING_PASSWORD.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

fn default_data_dir() -> anyhow::Result<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("starling"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow::anyhow!("neither XDG_DATA_HOME nor HOME is set; pass --data-dir"))?;
    Ok(PathBuf::from(home).join(".local/share/starling"))
}

fn main() {
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal: a log file, a pipe
        // or journald gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STARLING_LOG")
                // mainline logs every failed bootstrap (each 2 s when
                // offline); discovery says it once, with what still works.
                .unwrap_or_else(|_| "warn,mainline=off".into()),
        )
        .init();
    let cli = Cli::parse();
    if let Err(error) = run(cli) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = match cli.data_dir {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    let ctx = commands::Context {
        data_dir: data_dir::DataDir::new(data_dir),
        json: cli.json,
    };
    match cli.command {
        Command::Up {
            api,
            listen,
            config,
            no_mdns,
            no_dht,
            dht_bootstrap,
        } => {
            let root = ctx.data_dir.root().to_owned();
            let (file, required) = match config {
                Some(file) => (file, true),
                None => (root.join("starling.toml"), false),
            };
            let env = |key: &str| std::env::var(key).ok();
            let config = config::Config::load(
                &file,
                required,
                env,
                config::Overrides {
                    api,
                    listen,
                    no_mdns,
                    no_dht,
                    dht_bootstrap,
                },
            )?;
            daemon::up(root, config)
        }
        Command::Account(AccountCommand::Create { display_name }) => {
            commands::account_create(&ctx, &display_name)
        }
        Command::Account(AccountCommand::Show) => commands::account_show(&ctx),
        Command::Account(AccountCommand::Certs { out }) => commands::account_certs(&ctx, &out),
        Command::Account(AccountCommand::Export { out, password }) => commands::account_export(
            &ctx,
            &out,
            &commands::read_password(password.password_file.as_deref())?,
        ),
        Command::Account(AccountCommand::Import { file, password }) => commands::account_import(
            &ctx,
            &file,
            &commands::read_password(password.password_file.as_deref())?,
        ),
        Command::Status => commands::status(&ctx),
        Command::Peer(PeerCommand::Add { peer }) => swarm_commands::peer_add(&ctx, &peer),
        Command::Contact(command) => contact_commands::run(&ctx, command),
        Command::Swarm(command) => match command {
            SwarmCommand::Create { title, mode } => {
                swarm_commands::swarm_create(&ctx, title.as_deref(), mode.as_deref())
            }
            SwarmCommand::List => swarm_commands::swarm_list(&ctx),
            SwarmCommand::Invite {
                conversation,
                account_id,
            } => swarm_commands::swarm_invite(&ctx, &conversation, &account_id),
            SwarmCommand::Remove {
                conversation,
                account_id,
            } => swarm_commands::swarm_remove(&ctx, &conversation, &account_id),
            SwarmCommand::Leave { conversation } => {
                swarm_commands::swarm_leave(&ctx, &conversation)
            }
            SwarmCommand::Invites => swarm_commands::swarm_invites(&ctx),
            SwarmCommand::Join { conversation } => swarm_commands::swarm_join(&ctx, &conversation),
            SwarmCommand::Members { conversation } => {
                swarm_commands::swarm_members(&ctx, &conversation)
            }
            SwarmCommand::Ban {
                conversation,
                account_id,
            } => swarm_commands::swarm_vote(&ctx, &conversation, &account_id, "ban"),
            SwarmCommand::Unban {
                conversation,
                account_id,
            } => swarm_commands::swarm_vote(&ctx, &conversation, &account_id, "unban"),
            SwarmCommand::Profile {
                conversation,
                title,
                description,
            } => swarm_commands::swarm_profile(
                &ctx,
                &conversation,
                title.as_deref(),
                description.as_deref(),
            ),
            SwarmCommand::AllowedSigners { conversation, out } => {
                swarm_commands::swarm_allowed_signers(&ctx, &conversation, &out)
            }
        },
        Command::Send {
            conversation,
            text,
            reply_to,
        } => swarm_commands::send(&ctx, &conversation, &text, reply_to.as_deref()),
        Command::Edit {
            conversation,
            message,
            text,
        } => swarm_commands::edit(&ctx, &conversation, &message, &text),
        Command::Delete {
            conversation,
            message,
        } => swarm_commands::delete(&ctx, &conversation, &message),
        Command::React {
            conversation,
            message,
            reaction,
        } => swarm_commands::react(&ctx, &conversation, &message, &reaction),
        Command::Messages {
            conversation,
            limit,
            before,
        } => swarm_commands::messages(&ctx, &conversation, limit, before.as_deref()),
        Command::Events => events_command::events(&ctx),
        Command::GitUploadPack { repository } => commands::git_upload_pack(&repository),
        Command::DhtBootstrap { listen, nodes } => discovery_commands::dht_bootstrap(listen, nodes),
        Command::MdnsAdvertise {
            account,
            device,
            port,
        } => discovery_commands::mdns_advertise(&account, &device, port),
        Command::Device(DeviceCommand::Revoke { device_id }) => {
            commands::device_revoke(&ctx, &device_id)
        }
        Command::Cert(CertCommand::Verify {
            device,
            account,
            crl,
            at,
        }) => commands::cert_verify(&ctx, &device, &account, crl.as_deref(), at),
    }
}
