//! Local Postgres clusters started from the installed server binaries.
//!
//! Used by `serve` and the inventory commands when no database URL is configured (the embedded
//! default), by the demo, and by the tests. A cluster lives in `<dir>/pg`; its password in
//! `<dir>/pg-password` (mode 0600) and its server log in `<dir>/postgres.log`.
//!
//! Guarantees:
//! - `initdb` refuses to run as root, so as root the server runs as the `postgres` system user
//!   and its directory is owned by that user.
//! - A server this process started is stopped when the [`LocalCluster`] is dropped, and a
//!   watchdog process stops it when this process dies without dropping it (a panic that aborts,
//!   `SIGKILL`, a test binary exiting with the cluster in a static).
//! - A persistent directory is reused: the next start finds the cluster (and a server already
//!   running in it, which is then shared and left running).
//!
//! Deliberately left out: anything a production database needs (backups, tuning, TLS). Production
//! deployments give a `database_url`.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// Why a local cluster could not be created, started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    /// No `postgres`, `initdb` and `pg_ctl` found on PATH or under `/usr/lib/postgresql/*/bin`.
    #[error(
        "no Postgres server binaries found (looked for initdb and postgres on PATH and under /usr/lib/postgresql/*/bin); install them, e.g. `apt-get install postgresql`"
    )]
    NoBinaries,
    /// Running as root without a `postgres` user to run the server as.
    #[error(
        "running as root, but there is no `postgres` user to run the server as (initdb refuses root); create one with `useradd --system postgres` or run as another user"
    )]
    NoPostgresUser,
    /// The server user cannot reach the data directory.
    #[error(
        "the `postgres` user cannot write to {0}: every parent directory must be searchable by it (chmod o+x), or choose another data directory (e.g. under /var/lib)"
    )]
    Unreachable(PathBuf),
    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `initdb` exited with an error.
    #[error("initdb failed:\n{0}")]
    Initdb(String),
    /// The server exited or did not become ready.
    #[error("postgres did not start: {reason}\n--- last lines of {log} ---\n{tail}")]
    Start {
        /// What went wrong.
        reason: String,
        /// The server log.
        log: String,
        /// Its last lines.
        tail: String,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalPgError {
    let context = context.into();
    move |source| LocalPgError::Io { context, source }
}

/// How a cluster is tuned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Normal settings: data survives a crash (embedded default of `serve`).
    Durable,
    /// fsync and full-page writes off: for tests and benchmarks whose data is thrown away.
    Ephemeral,
}

/// The three server binaries, from one installation.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    /// Directory holding them.
    pub bin_dir: PathBuf,
}

impl PgBinaries {
    /// Finds the binaries: a `postgres` on PATH next to `initdb`, else the newest
    /// `/usr/lib/postgresql/<version>/bin`.
    pub fn find() -> Result<Self, LocalPgError> {
        let has_all = |dir: &Path| ["postgres", "initdb"].iter().all(|b| dir.join(b).is_file());
        if let Some(path) = std::env::var_os("PATH") {
            for dir in std::env::split_paths(&path) {
                let postgres = dir.join("postgres");
                if let Ok(real) = fs::canonicalize(&postgres)
                    && let Some(real_dir) = real.parent()
                    && has_all(real_dir)
                {
                    return Ok(Self {
                        bin_dir: real_dir.to_owned(),
                    });
                }
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                has_all(&bin).then_some((v, bin))
            })
            .collect();
        versions.sort();
        versions
            .pop()
            .map(|(_, bin_dir)| Self { bin_dir })
            .ok_or(LocalPgError::NoBinaries)
    }

    fn bin(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// The user the server runs as: the current one, or `postgres` when we are root.
#[derive(Debug, Clone, Copy)]
struct ServerUser {
    uid: u32,
    gid: u32,
    /// Whether commands must switch to it.
    switch: bool,
}

impl ServerUser {
    fn resolve() -> Result<Self, LocalPgError> {
        // SAFETY: getuid/getpwnam are called without concurrent modification of the passwd
        // database; the returned pointer is read before any other getpw* call.
        unsafe {
            let uid = libc::getuid();
            if uid != 0 {
                return Ok(Self {
                    uid,
                    gid: libc::getgid(),
                    switch: false,
                });
            }
            let pw = libc::getpwnam(c"postgres".as_ptr());
            if pw.is_null() {
                return Err(LocalPgError::NoPostgresUser);
            }
            Ok(Self {
                uid: (*pw).pw_uid,
                gid: (*pw).pw_gid,
                switch: true,
            })
        }
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        if self.switch {
            // std drops supplementary groups itself when switching away from root.
            cmd.uid(self.uid).gid(self.gid);
        }
        cmd.env_remove("PGDATA").env("LC_ALL", "C.UTF-8");
        cmd
    }

    fn chown(&self, path: &Path) -> Result<(), LocalPgError> {
        if self.switch {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .map_err(io(format!("chown {}", path.display())))?;
        }
        Ok(())
    }
}

/// A running local cluster.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    port: u16,
    password: Zeroizing<String>,
    /// The server process, when this value started it (and so stops it).
    server: Option<Child>,
    watchdog: Option<Child>,
}

/// Database every embedded setup uses.
pub const DATABASE: &str = "shadowsteer";

impl LocalCluster {
    /// Starts the cluster in `dir` (creating it on first use), or attaches to a server already
    /// running there. Blocking; call from `spawn_blocking` in async code.
    pub fn start(dir: &Path, durability: Durability) -> Result<Self, LocalPgError> {
        let bins = PgBinaries::find()?;
        let user = ServerUser::resolve()?;
        fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let dir = fs::canonicalize(dir).map_err(io(format!("resolve {}", dir.display())))?;
        let pgdata = dir.join("pg");
        let password = if pgdata.join("PG_VERSION").is_file() {
            read_password(&dir)?
        } else {
            init_cluster(&bins, user, &dir, durability)?
        };
        if let Some(port) = running_server(&pgdata) {
            return Ok(Self {
                dir,
                port,
                password,
                server: None,
                watchdog: None,
            });
        }
        let mut last = None;
        for _ in 0..5 {
            match start_server(&bins, user, &dir) {
                Ok((server, port)) => {
                    let watchdog = spawn_watchdog(server.id(), durability, &dir);
                    return Ok(Self {
                        dir,
                        port,
                        password,
                        server: Some(server),
                        watchdog,
                    });
                }
                // Another process may have taken the port between our probe and the bind.
                Err(e @ LocalPgError::Start { .. }) if e.to_string().contains("could not bind") => {
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(LocalPgError::NoBinaries))
    }

    /// The directory holding the cluster.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether this value started the server (and will stop it when dropped).
    pub fn owns_server(&self) -> bool {
        self.server.is_some()
    }

    /// Connection URL of `database` (contains the password: never log it).
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{}",
            self.password.as_str(),
            self.port,
            database
        )
    }

    /// libpq key/value connection string of `database`, the form `CREATE SUBSCRIPTION` takes
    /// (contains the password: never log it).
    pub fn conninfo(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={} dbname={}",
            self.port,
            self.password.as_str(),
            database
        )
    }

    /// Stops the server if this value started it; waits up to 20 s for a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if let Some(mut server) = self.server.take() {
            stop_child(&mut server);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn stop_child(server: &mut Child) {
    let pid = server.id() as libc::pid_t;
    // SIGINT is Postgres' "fast" shutdown: roll back sessions, checkpoint, exit.
    // SAFETY: signalling a child we spawned and have not yet reaped.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = server.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // SIGQUIT is "immediate" shutdown; then give up politeness.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGQUIT) };
    std::thread::sleep(Duration::from_secs(2));
    let _ = server.kill();
    let _ = server.wait();
}

fn random_password() -> Zeroizing<String> {
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    Zeroizing::new(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn read_password(dir: &Path) -> Result<Zeroizing<String>, LocalPgError> {
    let path = dir.join("pg-password");
    let text = fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

fn init_cluster(
    bins: &PgBinaries,
    user: ServerUser,
    dir: &Path,
    durability: Durability,
) -> Result<Zeroizing<String>, LocalPgError> {
    let pgdata = dir.join("pg");
    if pgdata.exists() {
        // A half-made cluster from an interrupted initdb: start over (it holds no data yet).
        fs::remove_dir_all(&pgdata).map_err(io(format!("remove {}", pgdata.display())))?;
    }
    fs::create_dir(&pgdata).map_err(io(format!("create {}", pgdata.display())))?;
    fs::set_permissions(&pgdata, fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod {}", pgdata.display())))?;
    user.chown(&pgdata)?;
    if user.switch {
        let reachable = user
            .command(Path::new("/usr/bin/test"))
            .arg("-w")
            .arg(&pgdata)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !reachable {
            let _ = fs::remove_dir_all(&pgdata);
            return Err(LocalPgError::Unreachable(dir.to_owned()));
        }
    }

    let password = random_password();
    let pw_path = dir.join("pg-password");
    write_private(&pw_path, password.as_bytes())?;
    // initdb reads the password from a file the server user can read; it is removed right after.
    let pw_outside = std::env::temp_dir().join(format!(
        "shadowsteer-initdb-pw-{}-{}",
        std::process::id(),
        random_suffix()
    ));
    write_private(&pw_outside, password.as_bytes())?;
    user.chown(&pw_outside)?;

    let mut cmd = user.command(&bins.bin("initdb"));
    cmd.arg("-D")
        .arg(&pgdata)
        .args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--auth=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", pw_outside.display()));
    if durability == Durability::Ephemeral {
        cmd.arg("--no-sync");
    }
    let out = cmd.output().map_err(io("run initdb"));
    let _ = fs::remove_file(&pw_outside);
    let out = out?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&pgdata);
        return Err(LocalPgError::Initdb(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }

    let mut settings = String::from(
        "\n# shadowsteer local cluster\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = ''\n\
         wal_level = logical\n\
         max_wal_senders = 20\n\
         max_replication_slots = 20\n\
         max_logical_replication_workers = 20\n\
         max_worker_processes = 32\n\
         max_connections = 300\n\
         shared_buffers = 128MB\n\
         log_min_messages = warning\n",
    );
    if durability == Durability::Ephemeral {
        settings.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
    }
    let conf = pgdata.join("postgresql.conf");
    fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .and_then(|mut f| f.write_all(settings.as_bytes()))
        .map_err(io(format!("write {}", conf.display())))?;
    Ok(password)
}

/// A few random hex digits, so that concurrent initdb runs never share a password file.
fn random_suffix() -> String {
    let mut b = [0u8; 4];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn write_private(path: &Path, content: &[u8]) -> Result<(), LocalPgError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("create {}", path.display())))?;
    f.write_all(content)
        .map_err(io(format!("write {}", path.display())))
}

/// The port of a live server in `pgdata`, from its `postmaster.pid` (line 1: pid, line 4: port,
/// line 8: status).
fn running_server(pgdata: &Path) -> Option<u16> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let pid: libc::pid_t = lines.first()?.trim().parse().ok()?;
    let port: u16 = lines.get(3)?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    let ready = lines.get(7).map(|s| s.trim() == "ready").unwrap_or(false);
    (alive && ready).then_some(port)
}

fn free_port() -> Result<u16, LocalPgError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io("find a free port"))?;
    Ok(l.local_addr().map_err(io("find a free port"))?.port())
}

fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    if let Ok(mut f) = fs::File::open(log) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(4000)));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn start_server(
    bins: &PgBinaries,
    user: ServerUser,
    dir: &Path,
) -> Result<(Child, u16), LocalPgError> {
    let pgdata = dir.join("pg");
    let port = free_port()?;
    let log_path = dir.join("postgres.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(format!("open {}", log_path.display())))?;
    let log_err = log.try_clone().map_err(io("clone log handle"))?;
    let mut child = user
        .command(&bins.bin("postgres"))
        .arg("-D")
        .arg(&pgdata)
        .arg("-p")
        .arg(port.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C meant for us must not kill the server mid-write;
        // we stop it cleanly ourselves.
        .process_group(0)
        .spawn()
        .map_err(io("spawn postgres"))?;
    let failed = |reason: String| LocalPgError::Start {
        reason,
        log: log_path.display().to_string(),
        tail: log_tail(&log_path),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(failed(format!("server exited with {status}")));
        }
        if running_server(&pgdata) == Some(port) {
            return Ok((child, port));
        }
        if Instant::now() > deadline {
            stop_child(&mut child);
            return Err(failed("not ready after 60 s".into()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shell loop that stops the server once this process is gone, and for ephemeral clusters
/// removes the directory after. Best effort: without `sh` there is no watchdog, and `Drop` still
/// stops the server on every normal exit path.
fn spawn_watchdog(server_pid: u32, durability: Durability, dir: &Path) -> Option<Child> {
    let owner = std::process::id();
    let cleanup = match durability {
        Durability::Ephemeral => format!(
            "while kill -0 {server_pid} 2>/dev/null; do sleep 0.1; done; rm -rf '{}'",
            dir.display().to_string().replace('\'', "'\\''")
        ),
        Durability::Durable => String::new(),
    };
    let script = format!(
        "while kill -0 {owner} 2>/dev/null; do sleep 0.5; done; kill -INT {server_pid} 2>/dev/null; {cleanup}"
    );
    Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .ok()
}

/// A fresh temporary directory the server user can reach, for ephemeral clusters. The caller
/// owns it; the watchdog removes it if the process dies.
pub fn temp_cluster_dir(prefix: &str) -> Result<PathBuf, LocalPgError> {
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let mut bytes = [0u8; 6];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let dir = base.join(format!("{prefix}-{name}"));
        match fs::create_dir(&dir) {
            Ok(()) => {
                fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                    .map_err(io(format!("chmod {}", dir.display())))?;
                return Ok(dir);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(format!("create {}", dir.display()))(e)),
        }
    }
    Err(io("create a temporary directory")(std::io::Error::other(
        "name collisions",
    )))
}
