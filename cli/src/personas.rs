//! `phasefleet personas …`: the registry of personas teams may bind by name. Registering
//! is an operator's act (like the admin API's `PUT /v1/admin/personas/{name}`); a persona
//! that names a provider must name one the configuration declares, with a model it allows.

use crate::exit::{CliError, NOT_FOUND};
use crate::output::{Output, print_one, print_rows};
use clap::Subcommand;
use phasefleet::store::persona_registry;
use phasefleet::workflow::Definition;
use phasefleet::workflow::{Backend, Persona};
use sqlx::PgPool;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum Personas {
    /// Register persona files (YAML or JSON) under their names, replacing earlier ones.
    Register {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Registered personas.
    List,
    /// Remove a registration (runs already bound keep their persona).
    Remove { name: String },
}

pub async fn run(pool: &PgPool, cmd: Personas, output: Output) -> Result<(), CliError> {
    let mut conn = pool.acquire().await?;
    match cmd {
        Personas::Register { files } => {
            let config = phasefleet::config::Config::from_env()?;
            let mut registered = Vec::new();
            for file in &files {
                let persona = Persona::load(file)?;
                if persona.backend == Backend::Openai {
                    config
                        .check_model(
                            persona.provider.as_deref().unwrap_or_default(),
                            &persona.model,
                        )
                        .map_err(|m| {
                            CliError::new(crate::exit::USAGE, format!("{}: {m}", file.display()))
                        })?;
                }
                let who = crate::submit::whoami();
                let hash =
                    persona_registry::persona_registry_upsert(&mut conn, &persona, Some(&who))
                        .await?;
                registered.push(serde_json::json!({ "name": persona.name, "persona_hash": hash }));
            }
            print_one(output, &registered, |r| {
                r.iter()
                    .map(|p| format!("registered {}", p["name"].as_str().unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
        Personas::List => {
            let rows = persona_registry::persona_registry_list(&mut conn).await?;
            print_rows(
                output,
                &rows,
                &[
                    "NAME",
                    "VERSION",
                    "PROVIDER",
                    "MODEL",
                    "REGISTERED BY",
                    "AT",
                ],
                |p| {
                    let field = |k: &str| {
                        p.body
                            .get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    vec![
                        p.name.clone(),
                        p.version.clone(),
                        field("provider"),
                        field("model"),
                        p.registered_by.clone().unwrap_or_default(),
                        p.registered_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    ]
                },
            )?;
        }
        Personas::Remove { name } => {
            if !persona_registry::persona_registry_delete(&mut conn, &name).await? {
                return Err(CliError::new(
                    NOT_FOUND,
                    format!("no persona {name:?} is registered"),
                ));
            }
            print_one(output, &serde_json::json!({ "removed": name }), |_| {
                format!("removed {name}")
            })?;
        }
    }
    Ok(())
}
