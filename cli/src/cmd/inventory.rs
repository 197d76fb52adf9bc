//! `vakt inventory`.

use clap::Subcommand;

use super::env::{self, EnvArgs};
use crate::fail::Exit;
use crate::{exit, output};

/// Discovered inventory: adopt or reject nodes that answer differently from Git.
///
/// These are nodes that report an id, version, site or service kind Git does not declare (the
/// daemon polls every declared admin URL).
///
/// `adopt` writes the declaration into the work tree of --repo (review it, commit it, open a
/// pull request); `reject` records the item as untrusted (audited, shown on the site).
///
/// Examples:
///   vakt inventory list --env prod
///   vakt inventory adopt agg-osl1-04 --env prod --repo ~/ops
///   vakt inventory reject rogue-01 --env prod --reason "not ours: unknown image"
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct InventoryOpts {
    #[command(subcommand)]
    pub cmd: InventoryCmd,
}

#[derive(Debug, Subcommand)]
pub enum InventoryCmd {
    /// List discovered items and whether they were rejected.
    List {
        #[command(flatten)]
        target: EnvArgs,
        #[arg(long)]
        json: bool,
    },
    /// Write a discovered node's declaration into the work tree, for a pull request.
    Adopt {
        node: String,
        #[command(flatten)]
        target: EnvArgs,
        #[arg(long)]
        actor: Option<String>,
    },
    /// Mark a discovered node untrusted.
    Reject {
        node: String,
        #[command(flatten)]
        target: EnvArgs,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        actor: Option<String>,
    },
}

pub fn run(o: InventoryOpts) -> Exit {
    let t = match &o.cmd {
        InventoryCmd::List { target, .. }
        | InventoryCmd::Adopt { target, .. }
        | InventoryCmd::Reject { target, .. } => target.clone(),
    };
    let target = t.target(None)?;
    env::runtime().block_on(async move {
        let r: Result<u8, reconciler::Error> = async {
            let (store, mut audit) = target.open().await?;
            match o.cmd {
                InventoryCmd::List { json, .. } => {
                    let items = reconciler::ops::inventory::list(&store).await?;
                    if json {
                        let v: Vec<_> = items
                            .iter()
                            .map(|(d, r)| serde_json::json!({"discovered": d, "rejected": r}))
                            .collect();
                        output::print(&format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()));
                    } else if items.is_empty() {
                        output::print("Nothing discovered beyond what Git declares.\n");
                    } else {
                        for (d, r) in items {
                            output::print(&format!(
                                "{}  {} {} {} at {}'s URL: {}{}\n",
                                d.node_id,
                                d.service_kind,
                                d.site,
                                d.version,
                                d.declared_as,
                                d.detail,
                                r.map(|r| format!("  [rejected by {}: {}]", r.by, r.reason)).unwrap_or_default()
                            ));
                        }
                    }
                    Ok(exit::OK)
                }
                InventoryCmd::Adopt { node, target, actor } => {
                    let p = reconciler::ops::inventory::adopt(&store, &mut audit, &target.repo, &node, &env::actor(&actor)).await?;
                    output::print(&format!(
                        "wrote {}; review it, run `vakt validate`, commit and open a pull request.\n",
                        p.display()
                    ));
                    Ok(exit::OK)
                }
                InventoryCmd::Reject { node, reason, actor, .. } => {
                    let r = reconciler::ops::inventory::reject(&store, &mut audit, &node, &env::actor(&actor), &reason).await?;
                    output::print(&format!("{} marked untrusted by {}.\n", r.node_id, r.by));
                    Ok(exit::OK)
                }
            }
        }
        .await;
        Ok(r?)
    })
}
