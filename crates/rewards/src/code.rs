//! Sandboxed code reward: run a program against stdin/stdout test cases.
//!
//! Each test runs in a fresh process tree under `unshare` (new network, PID and mount namespaces: no network,
//! no view of other processes, a read-only view of `/`, fresh tmpfs over `/tmp`, `/var/tmp`, `/dev/shm`,
//! `/run/lock` that the program cannot write), as a fresh unprivileged user id per run, in a private working
//! directory (`/tmp/w`, its only writable place), with CPU-time, address-space, process-count, file-size and open-file limits and a wall-clock
//! limit; the whole process group is killed at the end. Expected outputs stay in this process; the complete
//! output is compared. When namespaces are unavailable (not root, or a kernel that refuses), [`isolation`]
//! says so and programs run with limits only — no network isolation.

use crate::{Reward, RewardError, Sample, Score};
use regex::Regex;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

/// Resource limits and the interpreter.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Interpreter command; the program file name is appended (default `python3`).
    pub interpreter: Vec<String>,
    /// Wall-clock limit per test.
    pub wall_time: Duration,
    /// CPU-time limit per test (seconds, RLIMIT_CPU).
    pub cpu_secs: u64,
    /// Address-space limit (RLIMIT_AS).
    pub memory_bytes: u64,
    /// Process limit for the run's user (RLIMIT_NPROC).
    pub max_procs: u64,
    /// Largest file the program may write (RLIMIT_FSIZE).
    pub max_file_bytes: u64,
    /// Output beyond this many bytes stops the program and fails the test.
    pub max_output_bytes: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            interpreter: vec!["python3".into()],
            wall_time: Duration::from_secs(5),
            cpu_secs: 4,
            memory_bytes: 512 << 20,
            max_procs: 64,
            max_file_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
        }
    }
}

/// What isolation the machine allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// New network/PID/mount namespaces and an unprivileged user id per run.
    Namespaces,
    /// Resource limits and a private directory only; the reason namespaces failed.
    LimitsOnly(String),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status.
    Exited(i32),
    /// Killed by this signal (CPU limit, memory, …).
    Signaled(i32),
    /// Wall-clock limit reached; the group was killed.
    TimedOut,
    /// Output limit reached; the group was killed.
    OutputLimit,
}

/// Result of one sandboxed run.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub outcome: Outcome,
    pub stdout: Vec<u8>,
    /// The last few KiB of stderr.
    pub stderr_tail: String,
    pub wall: Duration,
    /// The value of [`RUN_ID_ENV`] this run's processes carry.
    pub run_id: String,
}

const SANDBOX_UID: &str = "65534";
/// First of the unprivileged user ids handed to runs, one per run (round robin): RLIMIT_NPROC counts per
/// user, so a fork bomb in one run cannot starve a concurrent run, and runs cannot signal each other.
const UID_BASE: u32 = 200_000;
const UID_COUNT: u32 = 50_000;

fn sandbox_uid() -> u32 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    UID_BASE + (NEXT.fetch_add(1, Ordering::Relaxed) % UID_COUNT as u64) as u32
}
const PROGRAM: &str = "main.prog";

/// Environment variable carrying a per-run id (lets tests find stray processes).
pub const RUN_ID_ENV: &str = "R1_SANDBOX_RUN";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Probe (once) whether namespaces work here.
pub fn isolation() -> &'static Isolation {
    static ISO: OnceLock<Isolation> = OnceLock::new();
    ISO.get_or_init(|| {
        let out = Command::new("unshare")
            .args(["--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc", "--", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs tmpfs /tmp && setpriv --reuid={SANDBOX_UID} --regid={SANDBOX_UID} --clear-groups true"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match out {
            Ok(o) if o.status.success() => Isolation::Namespaces,
            Ok(o) => Isolation::LimitsOnly(format!(
                "unshare --net --pid --mount failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Isolation::LimitsOnly(format!("cannot start unshare: {e}")),
        }
    })
}

/// The script run as root inside the fresh namespaces: hide world-writable directories behind tmpfs, make `/`
/// read-only (this mount namespace only), copy the program into a private directory owned by the run's user,
/// drop privileges and run.
const INNER: &str = r#"exec 3<"$1"; uid="$2"; shift 2
mount -t tmpfs -o size=64m,mode=755 tmpfs /tmp || exit 125
mount -t tmpfs -o size=1m,mode=755 tmpfs /var/tmp 2>/dev/null
mount -t tmpfs -o size=1m,mode=755 tmpfs /dev/shm 2>/dev/null
mount -t tmpfs -o size=1m,mode=755 tmpfs /run/lock 2>/dev/null
mount -o remount,bind,ro / 2>/dev/null
mkdir -m 700 /tmp/w && cat <&3 >/tmp/w/main.prog && exec 3<&- && chown -R "$uid:$uid" /tmp/w || exit 125
cd /tmp/w || exit 125
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all "$@" main.prog"#;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, RewardError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("r1-sandbox-{}-{n}-{nanos}", std::process::id()));
        let mut b = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(&p).map_err(|e| RewardError::Sandbox {
            op: "mkdir".into(),
            path: p.display().to_string(),
            source: e,
        })?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn set_limit(res: libc::__rlimit_resource_t, v: u64) -> std::io::Result<()> {
    let l = libc::rlimit { rlim_cur: v, rlim_max: v };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(res, &l) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Read a pipe into memory up to `cap` bytes; beyond that set `over` and stop.
fn drain(mut r: impl Read + Send + 'static, cap: usize, over: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => return buf,
                Ok(n) => {
                    if buf.len() + n > cap {
                        over.store(true, Ordering::SeqCst);
                        return buf;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    })
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

/// Run `program` with `stdin` in the sandbox.
pub fn run(cfg: &SandboxConfig, program: &str, stdin: &[u8]) -> Result<RunOutput, RewardError> {
    let dir = TempDir::new()?;
    let src = dir.0.join(PROGRAM);
    std::fs::write(&src, program).map_err(|e| RewardError::Sandbox {
        op: "write".into(),
        path: src.display().to_string(),
        source: e,
    })?;
    let run_id = format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
    let mut cmd = match isolation() {
        Isolation::Namespaces => {
            let mut c = Command::new("unshare");
            c.args([
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount",
                "--mount-proc",
                "--",
                "sh",
                "-c",
                INNER,
                "sh",
            ]);
            c.arg(&src).arg(sandbox_uid().to_string()).args(&cfg.interpreter);
            c
        }
        Isolation::LimitsOnly(_) => {
            let (first, rest) = cfg.interpreter.split_first().map_or(("python3", &[][..]), |(f, r)| (f.as_str(), r));
            let mut c = Command::new(first);
            c.args(rest).arg(&src).current_dir(&dir.0);
            c
        }
    };
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/tmp/w")
        .env("TMPDIR", "/tmp/w")
        .env("LANG", "C.UTF-8")
        .env(RUN_ID_ENV, &run_id)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (cpu, mem, nproc, fsize) = (cfg.cpu_secs, cfg.memory_bytes, cfg.max_procs, cfg.max_file_bytes);
    // SAFETY: the closure only calls async-signal-safe functions (setsid, setrlimit).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            set_limit(libc::RLIMIT_CPU, cpu)?;
            set_limit(libc::RLIMIT_AS, mem)?;
            set_limit(libc::RLIMIT_NPROC, nproc)?;
            set_limit(libc::RLIMIT_FSIZE, fsize)?;
            set_limit(libc::RLIMIT_CORE, 0)?;
            set_limit(libc::RLIMIT_NOFILE, 64)?;
            Ok(())
        });
    }
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| RewardError::Sandbox {
        op: "spawn".into(),
        path: cfg.interpreter.join(" "),
        source: e,
    })?;
    let pid = child.id() as libc::pid_t;
    let over = Arc::new(AtomicBool::new(false));
    let out_h = child.stdout.take().map(|o| drain(o, cfg.max_output_bytes, over.clone()));
    let err_h = child.stderr.take().map(|e| drain(e, 64 << 10, Arc::new(AtomicBool::new(false))));
    if let Some(mut w) = child.stdin.take() {
        let data = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    let mut outcome = None;
    while !exited_unreaped(pid) {
        if over.load(Ordering::SeqCst) {
            outcome = Some(Outcome::OutputLimit);
            break;
        }
        if start.elapsed() >= cfg.wall_time {
            outcome = Some(Outcome::TimedOut);
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Kill the whole group (the namespace's init dies with it, taking every process in the namespace).
    // SAFETY: plain syscall; pid is our unreaped child, so its group id cannot have been reused.
    unsafe {
        libc::killpg(pid, libc::SIGKILL);
    }
    let status =
        child.wait().map_err(|e| RewardError::Sandbox { op: "wait".into(), path: run_id.clone(), source: e })?;
    let wall = start.elapsed();
    let stdout = out_h.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err_h.and_then(|h| h.join().ok()).unwrap_or_default();
    if outcome.is_none() && over.load(Ordering::SeqCst) {
        outcome = Some(Outcome::OutputLimit);
    }
    let outcome = outcome.unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Outcome::Exited(c),
            (None, Some(s)) => Outcome::Signaled(s),
            (None, None) => Outcome::Signaled(0),
        }
    });
    let tail = String::from_utf8_lossy(&stderr[stderr.len().saturating_sub(2048)..]).into_owned();
    Ok(RunOutput { outcome, stdout, stderr_tail: tail, wall, run_id })
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
    /// Run every test in its own sandbox; a test passes only on exit 0 with the complete expected output,
    /// and a test that could not be run fails.
    pub fn run_suite(&self, program: &str, tests: &[TestCase]) -> Suite {
        let mut suite = Suite { passed: 0, not_run: 0, first_error: None };
        for t in tests {
            match run(&self.config, program, t.input.as_bytes()) {
                Ok(out) => {
                    if out.outcome == Outcome::Exited(0) && outputs_match(&out.stdout, &t.output) {
                        suite.passed += 1;
                    }
                }
                Err(e) => {
                    suite.not_run += 1;
                    suite.first_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        suite
    }

    /// Number of tests passed.
    pub fn pass_count(&self, program: &str, tests: &[TestCase]) -> usize {
        self.run_suite(program, tests).passed
    }
}

impl Reward for CodeReward {
    fn name(&self) -> &str {
        "code"
    }
    fn score(&self, completion: &str, sample: &Sample) -> Result<Score, RewardError> {
        let tests = parse_tests(self.name(), sample)?;
        let Some(program) = extract_code(completion) else {
            return Ok(Score::new(0.0, "no code block"));
        };
        let suite = self.run_suite(program, &tests);
        let passed = suite.passed;
        let mut note = match isolation() {
            Isolation::Namespaces => String::new(),
            Isolation::LimitsOnly(why) => format!(" (no network namespace: {why})"),
        };
        if let Some(e) = &suite.first_error {
            note.push_str(&format!("; {} did not run: {e}", suite.not_run));
        }
        Ok(Score::new(passed as f64 / tests.len() as f64, format!("{passed}/{} tests passed{note}", tests.len())))
    }
}
