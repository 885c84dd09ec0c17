//! `firewall show` and `firewall remove`: the iptables and ip6tables rules (filter and nat)
//! the plugin owns on this host.

use crate::config::Config;
use crate::dataplane::iptables::{self, Family, TABLES};
use crate::error::{Error, Result};

use super::plugin_socket::{plugin_activate, SOCKET_TIMEOUT};

/// `firewall` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum FirewallCommand {
    /// Print every rule and chain the plugin owns, as `iptables -S` lines per table.
    Show,
    /// Delete every rule and chain the plugin owns (refused while the plugin serves).
    Remove {
        /// Remove them even while the plugin serves (its containers lose their forwarding,
        /// isolation and published ports until the plugin rewrites them).
        #[arg(long)]
        force: bool,
    },
}

/// One listed table: its heading (`iptables -t filter`, ...) and our rules in it.
type Listing = Vec<(String, Result<Vec<String>>)>;

/// Runs a `firewall` subcommand; returns the exit code.
pub(crate) async fn run(config: &Config, cmd: FirewallCommand) -> Result<i32> {
    match cmd {
        FirewallCommand::Show => show().await,
        FirewallCommand::Remove { force } => remove(config, force).await,
    }
}

async fn show() -> Result<i32> {
    let listing = tokio::task::spawn_blocking(list_owned)
        .await
        .map_err(|e| Error::msg(format!("list firewall rules: {e}")))?;
    let mut total = 0;
    for (heading, listed) in listing {
        match listed {
            Ok(lines) => {
                println!("# {heading}");
                total += lines.len();
                for l in lines {
                    println!("{l}");
                }
            }
            // ip6tables may be unusable (IPv6 off): nothing of ours there.
            Err(e) if heading.starts_with("ip6") => {
                println!("# {heading}: not available ({e})");
            }
            Err(e) => return Err(e),
        }
    }
    if total == 0 {
        println!("no calico-libnetwork firewall rules on this host");
    }
    Ok(0)
}

/// Our rules per backend, family and table (blocking: runs iptables).
fn list_owned() -> Listing {
    let mut out: Listing = Vec::new();
    for (i, b) in iptables::backends().into_iter().enumerate() {
        for family in [Family::V4, Family::V6] {
            for table in TABLES {
                let listed = iptables::list_owned_in(b, family, table);
                // The variant not in use is shown only where it holds rules of
                // ours (left by a run with it).
                if i > 0 && !listed.as_ref().is_ok_and(|l| !l.is_empty()) {
                    continue;
                }
                let fatal = listed.is_err() && family == Family::V4;
                out.push((format!("{} -t {table}", family.bin_in(b)), listed));
                if fatal {
                    // iptables itself fails (its lock held, ...): say so now.
                    return out;
                }
            }
        }
    }
    out
}

async fn remove(config: &Config, force: bool) -> Result<i32> {
    let serving = plugin_activate(&config.socket, SOCKET_TIMEOUT).await;
    if serving.is_ok() {
        if !force {
            return Err(Error::msg(format!(
                "remove firewall rules: the plugin is serving on {} and its \
                 containers need them; stop it first (it removes them itself when no \
                 endpoint is left), or pass --force",
                config.socket.display()
            )));
        }
        eprintln!(
            "warning: the plugin serving on {} will write its rules again at its next \
             change",
            config.socket.display()
        );
    }
    let removed = tokio::task::spawn_blocking(iptables::remove_all)
        .await
        .map_err(|e| Error::msg(format!("remove firewall rules: {e}")))??;
    if removed == 0 {
        println!("no calico-libnetwork firewall rules on this host");
    } else {
        println!("removed {removed} calico-libnetwork firewall rules and chains");
    }
    Ok(0)
}
