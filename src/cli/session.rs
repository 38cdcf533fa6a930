//! `shadowsteer session failback`: an operator moves clients back to their primary (the
//! primary's agent claims them by the make-before-break path, also with `failback = "manual"`).

use clap::Subcommand;
use shadowsteer::domain::{ApplianceId, ClientId};
use shadowsteer::store::takeover;

use super::{CommandError, CommandResult, DbArgs, db};

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// Move one client (or every client of a primary) back to its primary appliance.
    Failback {
        /// The client.
        #[arg(long, conflicts_with = "primary", required_unless_present = "primary")]
        client: Option<String>,
        /// Every client whose primary is this appliance.
        #[arg(long)]
        primary: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
}

pub async fn run(cmd: SessionCommand) -> CommandResult {
    match cmd {
        SessionCommand::Failback {
            client,
            primary,
            db,
        } => {
            let input = |e: &dyn std::fmt::Display| CommandError::Input(e.to_string());
            let client = client
                .map(ClientId::new)
                .transpose()
                .map_err(|e| input(&e))?;
            let primary = primary
                .map(ApplianceId::new)
                .transpose()
                .map_err(|e| input(&e))?;
            let database = db::open(&db).await?;
            let done =
                takeover::request_failback(&database.pool, client.as_ref(), primary.as_ref()).await;
            database.close().await;
            let done = done.map_err(|e| CommandError::Failed(anyhow::Error::new(e)))?;
            if done.clients.is_empty() {
                return Err(CommandError::Input(
                    "no such client (or the appliance is no client's primary)".into(),
                ));
            }
            for c in &done.clients {
                println!("{c}");
            }
            eprintln!(
                "{} client(s) asked back to their primary; its agent moves them without loss",
                done.clients.len()
            );
            Ok(())
        }
    }
}
