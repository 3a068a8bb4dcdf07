//! `starling contact …`: thin clients of the daemon's contact routes that
//! print text, or the API's JSON with `--json`.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::ApiClient;
use crate::commands::Context;

/// Contacts: one-to-one conversations with other accounts, and blocks.
#[derive(Subcommand)]
pub enum ContactCommand {
    /// Ask an account to be a contact (creates a one-to-one swarm inviting it).
    Add {
        /// The account id.
        account_id: String,
    },
    /// Accept an account's contact request (joins its one-to-one swarm).
    Accept {
        /// The requester's account id.
        account_id: String,
    },
    /// Decline an account's contact request (it is told, and stops asking).
    Decline {
        /// The requester's account id.
        account_id: String,
    },
    /// Block an account: its requests are dropped and its connections refused.
    Block {
        /// The account id.
        account_id: String,
    },
    /// Unblock an account.
    Unblock {
        /// The account id.
        account_id: String,
    },
    /// List contacts, requests sent, and blocked accounts.
    List,
    /// List contact requests received and not answered.
    Requests,
}

fn print(ctx: &Context, value: &Value, text: impl FnOnce() -> String) {
    ctx.print(value.clone(), text);
}

fn entry_line(e: &Value) -> String {
    format!(
        "{}  {}  {}  {}",
        e["account_id"].as_str().unwrap_or("?"),
        e["state"].as_str().unwrap_or("?"),
        e["conversation"].as_str().unwrap_or("-"),
        e["display_name"].as_str().unwrap_or("")
    )
}

fn lines(value: &Value, line: impl Fn(&Value) -> String) -> String {
    value
        .as_array()
        .map(|a| a.iter().map(line).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// Runs one `starling contact` subcommand.
pub fn run(ctx: &Context, command: ContactCommand) -> anyhow::Result<()> {
    let client = ApiClient::discover(ctx.data_dir.root())?;
    let action = |account: &str, verb: &str| {
        client.post(&format!("/v1/contacts/{account}/{verb}"), json!({}))
    };
    let answer = match command {
        ContactCommand::Add { account_id } => {
            client.post("/v1/contacts", json!({ "account_id": account_id }))?
        }
        ContactCommand::Accept { account_id } => action(&account_id, "accept")?,
        ContactCommand::Decline { account_id } => action(&account_id, "decline")?,
        ContactCommand::Block { account_id } => action(&account_id, "block")?,
        ContactCommand::Unblock { account_id } => {
            let answer = action(&account_id, "unblock")?;
            print(ctx, &answer, || format!("unblocked {account_id}"));
            return Ok(());
        }
        ContactCommand::List => {
            let answer = client.get("/v1/contacts")?;
            print(ctx, &answer, || lines(&answer, entry_line));
            return Ok(());
        }
        ContactCommand::Requests => {
            let answer = client.get("/v1/contacts/requests")?;
            print(ctx, &answer, || {
                lines(&answer, |r| {
                    format!(
                        "{}  {}  {}",
                        r["account_id"].as_str().unwrap_or("?"),
                        r["conversation"].as_str().unwrap_or("?"),
                        r["display_name"].as_str().unwrap_or("")
                    )
                })
            });
            return Ok(());
        }
    };
    print(ctx, &answer, || entry_line(&answer));
    Ok(())
}
