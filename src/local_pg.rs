//! A private PostgreSQL server started from the system's binaries (`initdb`, `pg_ctl`).
//!
//! Used by `phasefleet demo` and `phasefleet dev` when `DATABASE_URL` is unset, and by
//! tests that must restart the server under a running worker without disturbing
//! anyone else's database. On a machine without PostgreSQL, the binaries are installed
//! with apt-get (as `scripts/test` does), unless `PHASEFLEET_NO_INSTALL` is set.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "no PostgreSQL server binaries found (looked in $PG_BIN, /usr/lib/postgresql/*/bin, `pg_config --bindir` and PATH); install postgresql or set DATABASE_URL"
    )]
    NoBinaries,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LocalPgError + '_ {
    move |source| LocalPgError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A running private server. Stopped (fast) when dropped.
#[derive(Debug)]
pub struct LocalPg {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<String>,
    stopped: bool,
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((v, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return Some(bin);
        }
    }
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Some(dir);
        }
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|p| p.join("initdb").exists() && p.join("pg_ctl").exists())
    })
}

/// PostgreSQL refuses to run as root; as root we run it as the `postgres` user.
fn run_as_user() -> Option<String> {
    let out = std::process::Command::new("id").arg("-u").output().ok()?;
    (String::from_utf8_lossy(&out.stdout).trim() == "0").then(|| "postgres".to_owned())
}

/// Install PostgreSQL's server binaries with apt-get (through sudo when not root), the
/// way `scripts/provision.sh` does for the tests. Progress goes to stderr.
async fn install_with_apt() -> Result<(), LocalPgError> {
    let have = |tool: &str| {
        std::env::var_os("PATH")
            .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).exists()))
    };
    if std::env::var_os("PHASEFLEET_NO_INSTALL").is_some() || !have("apt-get") {
        return Err(LocalPgError::NoBinaries);
    }
    let sudo = run_as_user().is_none() && have("sudo");
    eprintln!(
        "PostgreSQL is not installed: installing it with apt-get (set DATABASE_URL to use your own server)"
    );
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "postgresql"],
    ] {
        let mut cmd = if sudo {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        } else {
            Command::new("apt-get")
        };
        let status = cmd
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .await
            .map_err(io_err(Path::new("apt-get")))?;
        if !status.success() {
            return Err(LocalPgError::Command {
                what: format!("apt-get {}", args.join(" ")),
                detail: format!("{status}; install postgresql yourself or set DATABASE_URL"),
            });
        }
    }
    Ok(())
}

fn free_port() -> Result<u16, LocalPgError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err(Path::new("127.0.0.1:0")))?;
    let port = l
        .local_addr()
        .map_err(io_err(Path::new("127.0.0.1:0")))?
        .port();
    Ok(port)
}

impl LocalPg {
    /// Start a server whose files live under `dir` (created, and initialised on first
    /// use; an existing cluster there is reused). `settings` are extra `-c` options.
    ///
    /// # Errors
    /// [`LocalPgError`] when binaries are missing or `initdb`/`pg_ctl` fail.
    pub async fn start(dir: &Path, settings: &[(&str, &str)]) -> Result<Self, LocalPgError> {
        let bin = match find_bin_dir() {
            Some(bin) => bin,
            None => {
                install_with_apt().await?;
                find_bin_dir().ok_or(LocalPgError::NoBinaries)?
            }
        };
        let run_as = run_as_user();
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let dir = dir.canonicalize().map_err(io_err(dir))?;
        let data = dir.join("data");
        let mut pg = Self {
            bin,
            data,
            port: free_port()?,
            run_as,
            stopped: false,
        };
        if let Some(user) = &pg.run_as {
            pg.run("chown", Command::new("chown").arg("-R").arg(user).arg(&dir))
                .await?;
        }
        if !pg.data.join("PG_VERSION").exists() {
            let mut cmd = pg.pg_command("initdb");
            cmd.arg("-D").arg(&pg.data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]);
            pg.run("initdb", &mut cmd).await?;
        }
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            pg.port,
            dir.display()
        );
        for (k, v) in settings {
            opts.push_str(&format!(" -c {k}={v}"));
        }
        let log = dir.join("server.log");
        let mut cmd = pg.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&pg.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &opts, "start"]);
        pg.run("pg_ctl start", &mut cmd).await?;
        pg.stopped = false;
        Ok(pg)
    }

    fn pg_command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(exe);
                c
            }
            None => Command::new(exe),
        }
    }

    async fn run(&self, what: &str, cmd: &mut Command) -> Result<(), LocalPgError> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| LocalPgError::Command {
                what: what.to_owned(),
                detail: e.to_string(),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(LocalPgError::Command {
                what: what.to_owned(),
                detail: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            })
        }
    }

    /// Connection URL for the `postgres` database.
    #[must_use]
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    #[must_use]
    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The cluster's data directory.
    #[must_use]
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The directory of the server binaries (`pg_waldump`, `pgbench`, ...).
    #[must_use]
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Restart the server (fast shutdown: clients are disconnected).
    ///
    /// # Errors
    /// [`LocalPgError::Command`] when `pg_ctl restart` fails.
    pub async fn restart(&self) -> Result<(), LocalPgError> {
        let mut cmd = self.pg_command("pg_ctl");
        // `-l` again: without it the new postmaster would inherit our output pipes and
        // `output()` would wait for it to exit.
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.with_file_name("server.log"))
            .args(["-w", "-t", "60", "-m", "fast", "restart"]);
        self.run("pg_ctl restart", &mut cmd).await
    }

    /// Start a streaming standby of this server under `dir`: a base backup taken
    /// with `pg_basebackup -R` (it writes `standby.signal` and the connection to this
    /// server), started with `settings`.
    ///
    /// # Errors
    /// [`LocalPgError`] when the backup or the start fails.
    pub async fn start_standby(
        &self,
        dir: &Path,
        settings: &[(&str, &str)],
    ) -> Result<Self, LocalPgError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let dir = dir.canonicalize().map_err(io_err(dir))?;
        if let Some(user) = &self.run_as {
            self.run("chown", Command::new("chown").arg("-R").arg(user).arg(&dir))
                .await?;
        }
        let mut cmd = self.pg_command("pg_basebackup");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ])
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        self.run("pg_basebackup", &mut cmd).await?;
        Self::start(&dir, settings).await
    }

    /// Promote a standby to primary (`pg_ctl promote`, waiting until it accepts writes).
    ///
    /// # Errors
    /// [`LocalPgError::Command`] when `pg_ctl promote` fails.
    pub async fn promote(&self) -> Result<(), LocalPgError> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "60", "promote"]);
        self.run("pg_ctl promote", &mut cmd).await
    }

    /// Stop the server the way a crash does (`-m immediate`: no checkpoint, clients cut).
    ///
    /// # Errors
    /// [`LocalPgError::Command`] when `pg_ctl stop` fails.
    pub async fn crash(&mut self) -> Result<(), LocalPgError> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "immediate", "stop"]);
        self.run("pg_ctl stop -m immediate", &mut cmd).await?;
        self.stopped = true;
        Ok(())
    }

    /// Stop the server now.
    ///
    /// # Errors
    /// [`LocalPgError::Command`] when `pg_ctl stop` fails.
    pub async fn stop(&mut self) -> Result<(), LocalPgError> {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "fast", "stop"]);
        self.run("pg_ctl stop", &mut cmd).await?;
        self.stopped = true;
        Ok(())
    }
}

impl Drop for LocalPg {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let exe = self.bin.join("pg_ctl");
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = std::process::Command::new("runuser");
                c.arg("-u").arg(user).arg("--").arg(exe);
                c
            }
            None => std::process::Command::new(exe),
        };
        let _ = cmd
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
