//! Sandboxed code reward: run a program against stdin/stdout test cases.
//!
//! Each test runs in fresh namespaces (network, PID, mount, IPC, UTS; as root with a fresh unprivileged
//! user id per run, otherwise inside an unprivileged user namespace where the kernel allows one). The first
//! process of the PID namespace is a trusted init (a fixed shell script, never the program): it builds a new
//! root on tmpfs holding only read-only binds of `/usr` and the merged-`/usr` links (plus the interpreter's
//! prefix when it lives elsewhere), a read-only `/dev` with `null`, `zero`, `full`, `random`, `urandom`, a
//! fresh `/proc` and the program's own directory `/tmp/w` (a small tmpfs, its only writable place; the rest
//! of the new root, `/tmp` included, is read-only); it pivots into that
//! root, detaches the old one, reports readiness on a status pipe, starts the program with every capability
//! dropped and `no_new_privs`, reaps, and kills everything left in the namespace when the program's main
//! process ends. Any set-up step that fails is an error ([`RewardError::SandboxSetup`]), never a silent
//! downgrade. On the wall-clock limit the init is killed, which takes the whole namespace down.
//!
//! The scorer reads stdout, stderr and the status pipe with `poll` against one deadline (no read can block
//! it), reads stderr to the end keeping only the first [`SandboxConfig::stderr_keep_bytes`], and compares
//! the complete output; expected outputs never enter the sandbox.
//!
//! Memory: with cgroup v2 memory and pids controllers delegated to this process's cgroup, each run gets its
//! own cgroup (`memory.max` = [`SandboxConfig::memory_total_bytes`], `pids.max` = `max_procs`); otherwise
//! the bound is the stated total [`MemoryBound::PerProcess`]: RLIMIT_AS per process × RLIMIT_NPROC processes.
//!
//! Where no isolation is possible, [`run`] and [`CodeReward`] refuse ([`RewardError::NoIsolation`]) unless
//! the caller opts in with [`SandboxConfig::allow_unisolated`] (reward name `code_unisolated`).

use crate::{Reward, RewardError, Sample, Score};
use regex::Regex;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

/// Resource limits, the interpreter and the isolation policy.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Interpreter command; the program file name is appended (default `python3`).
    pub interpreter: Vec<String>,
    /// Wall-clock limit per test (set-up included).
    pub wall_time: Duration,
    /// CPU-time limit per process (seconds, RLIMIT_CPU).
    pub cpu_secs: u64,
    /// Address-space limit per process (RLIMIT_AS).
    pub memory_bytes: u64,
    /// Memory of the whole run where cgroup v2 is available (`memory.max`).
    pub memory_total_bytes: u64,
    /// Processes per run (RLIMIT_NPROC in the run's user, and `pids.max` with cgroup v2).
    pub max_procs: u64,
    /// Largest file the program may write (RLIMIT_FSIZE).
    pub max_file_bytes: u64,
    /// Output beyond this many bytes stops the program and fails the test.
    pub max_output_bytes: usize,
    /// Bytes of stderr kept; the rest is read (so a verbose program never dies of a broken pipe) and counted.
    pub stderr_keep_bytes: usize,
    /// Directories the program may read besides its own (read-only binds; symlinks are recreated). The
    /// interpreter's prefix is added when it is outside these.
    pub ro_paths: Vec<PathBuf>,
    /// Run programs with resource limits only when the machine allows no isolation. Off by default: then
    /// scoring refuses with [`RewardError::NoIsolation`].
    pub allow_unisolated: bool,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            interpreter: vec!["python3".into()],
            wall_time: Duration::from_secs(5),
            cpu_secs: 4,
            memory_bytes: 256 << 20,
            memory_total_bytes: 1 << 30,
            max_procs: 16,
            max_file_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
            stderr_keep_bytes: 64 << 10,
            ro_paths: ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"].map(PathBuf::from).to_vec(),
            allow_unisolated: false,
        }
    }
}

/// What isolation the machine allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// As root: namespaces and a fresh unprivileged user id per run.
    Namespaces,
    /// Without root: an unprivileged user namespace (user id 0 inside, no capabilities, no other user).
    UserNamespace,
    /// None possible; why both attempts failed.
    None(String),
}

/// How the memory of one run is bounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryBound {
    /// A cgroup v2 per run: `memory.max` and `pids.max`.
    Cgroup { memory_bytes: u64, pids: u64 },
    /// No cgroup v2 here: RLIMIT_AS per process and RLIMIT_NPROC processes, so at most `total` bytes.
    PerProcess { bytes_each: u64, procs: u64, total: u64 },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status (a signal that killed the program's main process shows as 128 + its number).
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Wall-clock limit reached; the namespace was killed.
    TimedOut,
    /// Output limit reached; the namespace was killed.
    OutputLimit,
}

/// Result of one sandboxed run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub outcome: Outcome,
    pub stdout: Vec<u8>,
    /// The first [`SandboxConfig::stderr_keep_bytes`] of stderr.
    pub stderr_head: String,
    /// All stderr bytes the program wrote (read to the end).
    pub stderr_bytes: u64,
    pub wall: Duration,
    /// The value of [`RUN_ID_ENV`] this run's processes carry.
    pub run_id: String,
    /// The isolation the run had.
    pub isolation: Isolation,
}

/// First of the unprivileged user ids handed to runs as root, one per run (round robin): RLIMIT_NPROC counts
/// per user, so a fork bomb in one run cannot starve a concurrent run, and runs cannot signal each other.
const UID_BASE: u32 = 200_000;
const UID_COUNT: u32 = 50_000;

fn sandbox_uid() -> u32 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Start each scoring process at a different place (by its pid) so that two of them on one machine do
    // not hand out the same ids at the same time.
    let start = u64::from(std::process::id()).wrapping_mul(7919);
    UID_BASE + (start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % u64::from(UID_COUNT)) as u32
}
const PROGRAM: &str = "main.prog";

/// Environment variable carrying a per-run id (lets tests find stray processes).
pub const RUN_ID_ENV: &str = "R1_SANDBOX_RUN";
/// Prefix of the per-run host directories (under the system temp dir).
pub const TEMP_PREFIX: &str = "r1-sandbox-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The trusted init, PID 1 of the run's namespaces (as root there). Arguments: new-root mount point, program
/// file, run uid, process limit, interpreter…; fd 3 is the status pipe. `R1_RO` lists the read-only paths,
/// `R1_PRIV` the `setpriv` user switch (empty in a user namespace).
const INIT: &str = r#"set -u
exec 4<"$2" 5<&0 || exit 125
R=$1; uid=$3; nproc=$4; shift 4
fail() { echo "setup failed: $*" >&3; exit 125; }
mount -t tmpfs -o size=8m,mode=755,nosuid,nodev r1root "$R" || fail "tmpfs on the new root"
for d in $R1_RO; do
  if [ -L "$d" ]; then ln -s "$(readlink "$d")" "$R$d" || fail "symlink $d"
  elif [ -d "$d" ]; then
    mkdir -p "$R$d" && mount --bind "$d" "$R$d" && mount -o remount,bind,ro,nosuid,nodev "$R$d" || fail "read-only bind of $d"
  fi
done
mkdir "$R/proc" "$R/dev" "$R/tmp" "$R/tmp/w" "$R/.old" || fail "directories in the new root"
mount -t proc -o nosuid,nodev,noexec proc "$R/proc" || fail "mount /proc"
mount -t tmpfs -o size=64k,mode=755,nosuid,noexec r1dev "$R/dev" || fail "tmpfs on /dev"
for n in null zero full random urandom; do
  : > "$R/dev/$n" && mount --bind "/dev/$n" "$R/dev/$n" || fail "/dev/$n"
done
mount -o remount,bind,ro,nosuid,noexec "$R/dev" || fail "read-only /dev"
mount -t tmpfs -o size=64m,mode=700,nosuid,nodev r1work "$R/tmp/w" || fail "tmpfs on /tmp/w"
cat <&4 > "$R/tmp/w/main.prog" && exec 4<&- && chown -R "$uid:$uid" "$R/tmp/w" || fail "program directory"
cd "$R" && pivot_root . .old && umount -l /.old && rmdir /.old || fail "pivot_root"
mount -o remount,bind,ro,nosuid,nodev / || fail "read-only new root"
cd /tmp/w || fail "cd /tmp/w"
echo ready >&3 && exec 3>&- || exit 125
prlimit --nproc="$nproc:$nproc" setpriv $R1_PRIV --no-new-privs --inh-caps=-all --bounding-set=-all -- "$@" main.prog <&5 5<&- &
pid=$!
exec 0<&- 1>&- 2>&- 5<&-
wait "$pid"
st=$?
kill -KILL -1 2>/dev/null
exit "$st""#;

/// The run's host directory (removed on drop).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, RewardError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("{TEMP_PREFIX}{}-{n}-{nanos}", std::process::id()));
        let mut b = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o755);
        b.create(&p).map_err(|e| io_err("mkdir", &p, e))?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io_err(op: &str, path: &Path, source: std::io::Error) -> RewardError {
    RewardError::Sandbox { op: op.into(), path: path.display().to_string(), source }
}

fn set_limit(res: libc::__rlimit_resource_t, v: u64) -> std::io::Result<()> {
    let l = libc::rlimit { rlim_cur: v, rlim_max: v };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(res, &l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the child has exited, without reaping it (its process group id stays reserved).
fn exited_unreaped(pid: libc::pid_t) -> bool {
    // SAFETY: waitid writes into the zeroed siginfo we own.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        r == 0 && info.si_pid() == pid
    }
}

/// SIGKILL the namespace's init (the only child of `unshare`) and wait, bounded, for `unshare` to exit,
/// which it does once the whole namespace is gone.
fn kill_init(unshare: libc::pid_t) {
    let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap_or_default();
    let Some(init) = children.split_whitespace().next().and_then(|p| p.parse::<libc::pid_t>().ok()) else {
        return;
    };
    // SAFETY: plain syscall. `init` is the child of our unreaped child `unshare`, which reaps it only by
    // exiting, so the pid cannot have been reused while we hold `unshare` unreaped.
    unsafe {
        libc::kill(init, libc::SIGKILL);
    }
    let until = Instant::now() + Duration::from_secs(5);
    while !exited_unreaped(unshare) && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `PATH` inside the sandbox.
const SANDBOX_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin";

/// Resolve a command name through the sandbox's `PATH` to its real file.
fn resolve(cmd: &str) -> Option<PathBuf> {
    if cmd.contains('/') {
        return std::fs::canonicalize(cmd).ok();
    }
    // The sandbox's PATH, not this process's: that is where the init will look.
    std::env::split_paths(SANDBOX_PATH)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// The read-only paths of a run: the configured ones that exist, plus the interpreter's prefix (the
/// directory above its `bin/`) when the interpreter is outside them.
fn ro_paths(cfg: &SandboxConfig) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = cfg.ro_paths.iter().filter(|p| p.symlink_metadata().is_ok()).cloned().collect();
    if let Some(real) = cfg.interpreter.first().and_then(|c| resolve(c))
        && !out.iter().any(|p| real.starts_with(p) && !p.is_symlink())
        && let Some(prefix) = real.parent().and_then(|b| if b.ends_with("bin") { b.parent() } else { Some(b) })
    {
        out.push(prefix.to_path_buf());
    }
    out
}

/// The cgroup v2 directory whose memory and pids controllers are delegated to this process, if any.
fn cgroup_parent() -> Option<&'static Path> {
    static CG: OnceLock<Option<PathBuf>> = OnceLock::new();
    CG.get_or_init(|| {
        let me = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = me.lines().find_map(|l| l.strip_prefix("0::"))?;
        let base = Path::new("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
        let ctl = std::fs::read_to_string(base.join("cgroup.subtree_control")).ok()?;
        let has = |c: &str| ctl.split_whitespace().any(|x| x == c);
        if !(has("memory") && has("pids")) {
            return None;
        }
        let probe = base.join(format!("r1-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).ok()?;
        let ok = std::fs::write(probe.join("memory.max"), "max").is_ok();
        let _ = std::fs::remove_dir(&probe);
        ok.then_some(base)
    })
    .as_deref()
}

/// How memory is bounded for runs with this configuration on this machine.
pub fn memory_bound(cfg: &SandboxConfig) -> MemoryBound {
    match cgroup_parent() {
        Some(_) => MemoryBound::Cgroup { memory_bytes: cfg.memory_total_bytes, pids: cfg.max_procs },
        None => MemoryBound::PerProcess {
            bytes_each: cfg.memory_bytes,
            procs: cfg.max_procs,
            total: cfg.memory_bytes.saturating_mul(cfg.max_procs),
        },
    }
}

/// A per-run cgroup (removed on drop, after killing what is left in it).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(cfg: &SandboxConfig, run_id: &str) -> Result<Option<Self>, RewardError> {
        let Some(parent) = cgroup_parent() else { return Ok(None) };
        let dir = parent.join(format!("r1-sandbox-{run_id}"));
        std::fs::create_dir(&dir).map_err(|e| io_err("create cgroup", &dir, e))?;
        let cg = Cgroup(dir);
        for (file, value) in [
            ("memory.max", cfg.memory_total_bytes.to_string()),
            ("memory.swap.max", "0".into()),
            ("pids.max", cfg.max_procs.to_string()),
        ] {
            let p = cg.0.join(file);
            if let Err(e) = std::fs::write(&p, value)
                && file != "memory.swap.max"
            {
                return Err(io_err("write cgroup limit", &p, e));
            }
        }
        Ok(Some(cg))
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        for _ in 0..100 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Which isolation a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Root,
    UserNs,
    Unisolated,
}

/// Probe (once) what isolation this machine allows: as root, namespaces with a fresh uid; otherwise an
/// unprivileged user namespace. The probe runs the real init (every set-up step) with `true` as program.
pub fn isolation() -> &'static Isolation {
    static ISO: OnceLock<Isolation> = OnceLock::new();
    ISO.get_or_init(|| {
        let probe = |mode| {
            let cfg = SandboxConfig {
                interpreter: vec!["true".into()],
                wall_time: Duration::from_secs(10),
                ..SandboxConfig::default()
            };
            match run_mode(&cfg, mode, "", b"") {
                Ok(o) if o.outcome == Outcome::Exited(0) => Ok(()),
                Ok(o) => Err(format!("probe program ended with {:?}: {}", o.outcome, o.stderr_head.trim())),
                Err(e) => Err(e.to_string()),
            }
        };
        let mut why = Vec::new();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            match probe(Mode::Root) {
                Ok(()) => return Isolation::Namespaces,
                Err(e) => why.push(format!("as root: {e}")),
            }
        }
        match probe(Mode::UserNs) {
            Ok(()) => Isolation::UserNamespace,
            Err(e) => {
                why.push(format!("user namespace: {e}"));
                Isolation::None(why.join("; "))
            }
        }
    })
}

/// Run `program` with `stdin` in the sandbox. Without isolation this refuses unless
/// [`SandboxConfig::allow_unisolated`] is set.
pub fn run(cfg: &SandboxConfig, program: &str, stdin: &[u8]) -> Result<RunOutput, RewardError> {
    let mode = match isolation() {
        Isolation::Namespaces => Mode::Root,
        Isolation::UserNamespace => Mode::UserNs,
        Isolation::None(_) if cfg.allow_unisolated => Mode::Unisolated,
        Isolation::None(why) => return Err(RewardError::NoIsolation { reason: why.clone() }),
    };
    run_mode(cfg, mode, program, stdin)
}

/// What the event loop collected.
struct Io {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stderr_bytes: u64,
    status: Vec<u8>,
    over: bool,
    timed_out: bool,
}

/// Pump stdin, stdout, stderr and the status pipe with `poll` until the child has exited and the pipes
/// are at end of file, or the deadline passes, or the output limit is reached. No read ever blocks.
fn pump(
    cfg: &SandboxConfig,
    pid: libc::pid_t,
    deadline: Instant,
    stdin: (Option<OwnedFd>, &[u8]),
    outs: [Option<OwnedFd>; 3],
) -> Io {
    let mut io = Io {
        stdout: Vec::new(),
        stderr: Vec::new(),
        stderr_bytes: 0,
        status: Vec::new(),
        over: false,
        timed_out: false,
    };
    let (mut win, data) = stdin;
    let mut written = 0usize;
    if data.is_empty() {
        win = None;
    }
    let [mut o, mut e, mut st] = outs;
    for fd in [&win, &o, &e, &st].into_iter().flatten() {
        let _ = set_nonblocking(fd.as_raw_fd());
    }
    let mut buf = vec![0u8; 1 << 16];
    let mut exited_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            io.timed_out = true;
            return io;
        }
        if exited_at.is_none() && exited_unreaped(pid) {
            exited_at = Some(now);
        }
        if exited_at.is_some() && o.is_none() && e.is_none() && st.is_none() {
            return io;
        }
        // Once the child is gone the namespace is gone; only an unisolated run can leave pipe holders.
        if exited_at.is_some_and(|t| now.duration_since(t) > Duration::from_millis(200)) {
            return io;
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(4);
        let slots: [(&Option<OwnedFd>, i16); 4] =
            [(&win, libc::POLLOUT), (&o, libc::POLLIN), (&e, libc::POLLIN), (&st, libc::POLLIN)];
        let mut which = Vec::with_capacity(4);
        for (i, (fd, ev)) in slots.iter().enumerate() {
            if let Some(fd) = fd {
                fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: *ev, revents: 0 });
                which.push(i);
            }
        }
        let wait_ms = deadline.saturating_duration_since(now).as_millis().min(20) as libc::c_int;
        // SAFETY: fds is a valid array of pollfd of the given length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms.max(1)) };
        for (pf, &i) in fds.iter().zip(&which) {
            if pf.revents == 0 {
                continue;
            }
            if i == 0 {
                let Some(w) = &win else { continue };
                // SAFETY: writing from a live slice to a descriptor we own.
                let n = unsafe { libc::write(w.as_raw_fd(), data[written..].as_ptr().cast(), data.len() - written) };
                if n > 0 {
                    written += n as usize;
                }
                if written >= data.len()
                    || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock)
                {
                    win = None;
                }
                continue;
            }
            let slot = match i {
                1 => &mut o,
                2 => &mut e,
                _ => &mut st,
            };
            let Some(fd) = slot else { continue };
            // SAFETY: reading into a buffer we own from a descriptor we own.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock) {
                *slot = None;
                continue;
            }
            if n < 0 {
                continue;
            }
            let chunk = &buf[..n as usize];
            match i {
                1 => {
                    if io.stdout.len() + chunk.len() > cfg.max_output_bytes {
                        io.over = true;
                        return io;
                    }
                    io.stdout.extend_from_slice(chunk);
                }
                2 => {
                    io.stderr_bytes += chunk.len() as u64;
                    let room = cfg.stderr_keep_bytes.saturating_sub(io.stderr.len());
                    io.stderr.extend_from_slice(&chunk[..room.min(chunk.len())]);
                }
                _ => {
                    if io.status.len() < 4096 {
                        io.status.extend_from_slice(chunk);
                    }
                }
            }
        }
    }
}

fn run_mode(cfg: &SandboxConfig, mode: Mode, program: &str, stdin: &[u8]) -> Result<RunOutput, RewardError> {
    let dir = TempDir::new()?;
    let src = dir.0.join(PROGRAM);
    std::fs::write(&src, program).map_err(|e| io_err("write", &src, e))?;
    let run_id = format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let isolation = match mode {
        Mode::Root => Isolation::Namespaces,
        Mode::UserNs => Isolation::UserNamespace,
        Mode::Unisolated => Isolation::None("caller opted in to unisolated runs".into()),
    };
    let (status_r, status_w) = pipe().map_err(|e| io_err("pipe", &dir.0, e))?;
    let mut env_extra: Vec<(&str, String)> = Vec::new();
    let mut cmd = match mode {
        Mode::Root | Mode::UserNs => {
            let mut c = Command::new("unshare");
            if mode == Mode::UserNs {
                c.args(["--user", "--map-root-user"]);
            }
            c.args([
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--ipc",
                "--uts",
                "--",
                "sh",
                "-c",
                INIT,
                "sh",
            ]);
            let uid = if mode == Mode::Root { sandbox_uid() } else { 0 };
            c.arg(&dir.0).arg(&src).arg(uid.to_string()).arg(cfg.max_procs.to_string()).args(&cfg.interpreter);
            let ro: Vec<String> = ro_paths(cfg).iter().map(|p| p.display().to_string()).collect();
            if let Some(bad) = ro.iter().find(|p| p.chars().any(|c| c.is_whitespace() || c.is_control())) {
                return Err(RewardError::SandboxSetup {
                    detail: format!("read-only path `{bad}` contains whitespace; the init cannot bind it"),
                });
            }
            env_extra.push(("R1_RO", ro.join(" ")));
            let user =
                if mode == Mode::Root { format!("--reuid={uid} --regid={uid} --clear-groups") } else { String::new() };
            env_extra.push(("R1_PRIV", user));
            c
        }
        Mode::Unisolated => {
            let (first, rest) = cfg.interpreter.split_first().map_or(("python3", &[][..]), |(f, r)| (f.as_str(), r));
            let mut c = Command::new(first);
            c.args(rest).arg(&src).current_dir(&dir.0);
            c
        }
    };
    let home = if mode == Mode::Unisolated { dir.0.display().to_string() } else { "/tmp/w".into() };
    cmd.env_clear()
        .envs(env_extra)
        .env("PATH", SANDBOX_PATH)
        .env("HOME", &home)
        .env("TMPDIR", &home)
        .env("LANG", "C.UTF-8")
        .env(RUN_ID_ENV, &run_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cgroup = match mode {
        Mode::Unisolated => None,
        _ => Cgroup::new(cfg, &run_id)?,
    };
    let procs_file = match &cgroup {
        Some(cg) => {
            let p = cg.0.join("cgroup.procs");
            Some(std::fs::OpenOptions::new().write(true).open(&p).map_err(|e| io_err("open", &p, e))?)
        }
        None => None,
    };
    let procs_fd = procs_file.as_ref().map(|f| f.as_raw_fd());
    let status_fd = status_w.as_raw_fd();
    let (cpu, mem, nproc, fsize) = (cfg.cpu_secs, cfg.memory_bytes, cfg.max_procs, cfg.max_file_bytes);
    let unisolated = mode == Mode::Unisolated;
    // SAFETY: the closure only calls async-signal-safe functions (setsid, setrlimit, write, dup2).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = procs_fd
                && libc::write(fd, b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(status_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            set_limit(libc::RLIMIT_CPU, cpu)?;
            set_limit(libc::RLIMIT_AS, mem)?;
            if unisolated {
                set_limit(libc::RLIMIT_NPROC, nproc)?;
            }
            set_limit(libc::RLIMIT_FSIZE, fsize)?;
            set_limit(libc::RLIMIT_CORE, 0)?;
            set_limit(libc::RLIMIT_NOFILE, 64)?;
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| io_err("spawn", Path::new(&cfg.interpreter.join(" ")), e))?;
    drop(status_w);
    drop(procs_file);
    let pid = child.id() as libc::pid_t;
    let io = pump(
        cfg,
        pid,
        start + cfg.wall_time,
        (child.stdin.take().map(OwnedFd::from), stdin),
        [
            child.stdout.take().map(OwnedFd::from),
            child.stderr.take().map(OwnedFd::from),
            if unisolated { None } else { Some(status_r) },
        ],
    );
    // Kill the namespace's init (if it is still there): its death takes every process in the namespace
    // with it (programs that called setsid included), and `unshare` exits only once the kernel has reaped
    // them all. Then the group, for the unisolated case and as a fallback.
    if !unisolated {
        kill_init(pid);
    }
    // SAFETY: plain syscall; pid is our unreaped child, so its group id cannot have been reused.
    unsafe {
        libc::killpg(pid, libc::SIGKILL);
    }
    let status = child.wait().map_err(|e| io_err("wait", Path::new(&run_id), e))?;
    drop(cgroup);
    let wall = start.elapsed();
    let ready = io.status.starts_with(b"ready");
    if !unisolated && !ready && !io.timed_out {
        let said = String::from_utf8_lossy(&io.status).trim().to_string();
        let detail = if said.is_empty() {
            format!("init ended before set-up finished ({status}): {}", String::from_utf8_lossy(&io.stderr).trim())
        } else {
            said
        };
        return Err(RewardError::SandboxSetup { detail });
    }
    let outcome = if io.over {
        Outcome::OutputLimit
    } else if io.timed_out {
        Outcome::TimedOut
    } else {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Outcome::Exited(c),
            (None, Some(s)) => Outcome::Signaled(s),
            (None, None) => Outcome::Signaled(0),
        }
    };
    let stderr_head = String::from_utf8_lossy(&io.stderr).into_owned();
    Ok(RunOutput { outcome, stdout: io.stdout, stderr_head, stderr_bytes: io.stderr_bytes, wall, run_id, isolation })
}

/// Outputs equal line by line, ignoring trailing spaces and trailing blank lines; every line counts.
pub fn outputs_match(got: &[u8], want: &str) -> bool {
    let norm = |s: &str| {
        let mut lines: Vec<String> = s.lines().map(|l| l.trim_end().to_string()).collect();
        while lines.last().is_some_and(String::is_empty) {
            lines.pop();
        }
        lines
    };
    match std::str::from_utf8(got) {
        Ok(g) => norm(g) == norm(want),
        Err(_) => false,
    }
}

/// One stdin → stdout test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    pub input: String,
    pub output: String,
}

/// Read `tests`: `[{"input": …, "output": …}, …]` or `{"inputs": […], "outputs": […]}`.
pub fn parse_tests(reward: &str, sample: &Sample) -> Result<Vec<TestCase>, RewardError> {
    let bad = |detail: String| RewardError::BadField { reward: reward.into(), field: "tests".into(), detail };
    let v = sample
        .get("tests")
        .ok_or_else(|| RewardError::MissingField { reward: reward.into(), field: "tests".into() })?;
    let as_str = |x: &serde_json::Value, what: &str| {
        x.as_str().map(str::to_string).ok_or_else(|| bad(format!("{what} is not a string: {x}")))
    };
    let tests = match v {
        serde_json::Value::Array(xs) => xs
            .iter()
            .map(|t| Ok(TestCase { input: as_str(&t["input"], "input")?, output: as_str(&t["output"], "output")? }))
            .collect::<Result<Vec<_>, RewardError>>()?,
        serde_json::Value::Object(o) => {
            let (Some(ins), Some(outs)) =
                (o.get("inputs").and_then(|x| x.as_array()), o.get("outputs").and_then(|x| x.as_array()))
            else {
                return Err(bad("expected `inputs` and `outputs` arrays".into()));
            };
            if ins.len() != outs.len() {
                return Err(bad(format!("{} inputs but {} outputs", ins.len(), outs.len())));
            }
            ins.iter()
                .zip(outs)
                .map(|(i, o)| Ok(TestCase { input: as_str(i, "input")?, output: as_str(o, "output")? }))
                .collect::<Result<Vec<_>, RewardError>>()?
        }
        other => return Err(bad(format!("expected an array or object, got {other}"))),
    };
    if tests.is_empty() {
        return Err(bad("no test cases".into()));
    }
    Ok(tests)
}

static FENCE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(?s)```[A-Za-z0-9_+-]*[ \t]*\n(.*?)```").expect("static regex"));

/// The last fenced code block of a completion.
pub fn extract_code(completion: &str) -> Option<&str> {
    FENCE.captures_iter(completion).last().and_then(|c| c.get(1)).map(|m| m.as_str())
}

/// Fraction of test cases passed by the completion's last code block (each in a fresh sandbox).
#[derive(Debug, Clone, Default)]
pub struct CodeReward {
    pub config: SandboxConfig,
}

/// Outcome of a test suite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suite {
    /// Tests passed (exit 0 and the complete expected output).
    pub passed: usize,
    /// Tests that could not be run at all (they count as failed); the first reason.
    pub not_run: usize,
    pub first_error: Option<String>,
}

impl CodeReward {
    /// Run every test in its own sandbox; a test passes only on exit 0 with the complete expected output.
    /// A test the sandbox could not start (spawn, temp files) fails and is counted; missing isolation and
    /// a failed isolation set-up are errors.
    pub fn run_suite(&self, program: &str, tests: &[TestCase]) -> Result<Suite, RewardError> {
        let mut suite = Suite { passed: 0, not_run: 0, first_error: None };
        for t in tests {
            match run(&self.config, program, t.input.as_bytes()) {
                Ok(out) => {
                    if out.outcome == Outcome::Exited(0) && outputs_match(&out.stdout, &t.output) {
                        suite.passed += 1;
                    }
                }
                Err(e @ (RewardError::NoIsolation { .. } | RewardError::SandboxSetup { .. })) => return Err(e),
                Err(e) => {
                    suite.not_run += 1;
                    suite.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        Ok(suite)
    }

    /// Number of tests passed.
    pub fn pass_count(&self, program: &str, tests: &[TestCase]) -> Result<usize, RewardError> {
        Ok(self.run_suite(program, tests)?.passed)
    }
}

impl Reward for CodeReward {
    fn name(&self) -> &str {
        if self.config.allow_unisolated { "code_unisolated" } else { "code" }
    }
    fn score(&self, completion: &str, sample: &Sample) -> Result<Score, RewardError> {
        let tests = parse_tests(self.name(), sample)?;
        if let Isolation::None(why) = isolation()
            && !self.config.allow_unisolated
        {
            return Err(RewardError::NoIsolation { reason: why.clone() });
        }
        let Some(program) = extract_code(completion) else {
            return Ok(Score::new(0.0, "no code block"));
        };
        let suite = self.run_suite(program, &tests)?;
        let passed = suite.passed;
        let mut note = match isolation() {
            Isolation::Namespaces => String::new(),
            Isolation::UserNamespace => " (user namespace)".to_string(),
            Isolation::None(why) => format!(" (UNISOLATED, caller opted in: {why})"),
        };
        if let Some(e) = &suite.first_error {
            note.push_str(&format!("; {} did not run: {e}", suite.not_run));
        }
        Ok(Score::new(passed as f64 / tests.len() as f64, format!("{passed}/{} tests passed{note}", tests.len())))
    }
}
