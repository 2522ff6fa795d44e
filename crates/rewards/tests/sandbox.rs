//! The adversarial corpus (`tests/adversarial/*.py`): every attack is contained, scores 0 and leaves no
//! process behind; correct programs (a verbose one included) still pass, so the checks can fail. On a
//! machine without any isolation the tests check the refusal instead, and the opt-in.

use rewards::code::{
    CodeReward, Isolation, MemoryBound, Outcome, RUN_ID_ENV, RunOutput, SandboxConfig, TEMP_PREFIX, TestCase,
    isolation, memory_bound, outputs_match, run,
};
use rewards::{Reward, RewardError, Sample};
use std::time::Duration;

fn corpus(name: &str) -> String {
    let p = format!("{}/tests/adversarial/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Processes (any user) whose environment carries a run id starting with `prefix`.
fn survivors(prefix: &str) -> Vec<String> {
    let needle = format!("{RUN_ID_ENV}={prefix}");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(env) = std::fs::read(e.path().join("environ"))
            && env.split(|b| *b == 0).any(|kv| kv.starts_with(needle.as_bytes()))
        {
            out.push(name);
        }
    }
    out
}

fn exact_run(run_id: &str) -> String {
    format!("{run_id}\u{0}")
}

fn survivors_of(out: &RunOutput) -> Vec<String> {
    // The run id itself, not a longer one that shares its prefix.
    let needle = exact_run(&out.run_id);
    survivors(&out.run_id)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                let key = format!("{RUN_ID_ENV}={needle}");
                env.windows(key.len()).any(|w| w == key.as_bytes())
            })
        })
        .collect()
}

fn secret() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    format!("SECRET-{:x}", t ^ 0x5a5a_1234_9876)
}

fn config() -> SandboxConfig {
    SandboxConfig {
        wall_time: Duration::from_secs(3),
        cpu_secs: 2,
        memory_bytes: 128 << 20,
        max_procs: 16,
        ..SandboxConfig::default()
    }
}

fn isolated() -> bool {
    match isolation() {
        Isolation::Namespaces => {
            println!("isolation: namespaces as root, a fresh uid per run");
            true
        }
        Isolation::UserNamespace => {
            println!("isolation: unprivileged user namespace");
            true
        }
        Isolation::None(why) => {
            println!("isolation: NONE ({why})");
            false
        }
    }
}

#[test]
fn isolation_is_found_where_the_kernel_allows_it() {
    // If plain util-linux can create the namespaces here, the sandbox must not report "no isolation"
    // (a broken set-up would otherwise silently turn every other test in this file into the refusal check).
    let kernel_allows = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--pid", "--fork", "--mount", "true"])
        .status()
        .is_ok_and(|s| s.success());
    println!("kernel allows user namespaces: {kernel_allows}; sandbox: {:?}", isolation());
    if kernel_allows {
        assert!(isolated(), "namespaces work here but the sandbox found no isolation");
    }
}

#[test]
fn without_isolation_scoring_refuses_unless_opted_in() {
    let mut s = Sample::new();
    s.insert("tests".into(), serde_json::json!([{ "input": "2\n", "output": "4" }]));
    let program = "```python\nprint(int(input()) * 2)\n```";
    let opted = rewards::reward_by_name("code_unisolated").expect("known reward");
    assert_eq!(opted.name(), "code_unisolated");
    let score = opted.score(program, &s).expect("the opted-in reward scores everywhere");
    assert_eq!(score.value, 1.0, "{}", score.reason);
    let default = rewards::reward_by_name("code").expect("known reward");
    if isolated() {
        let score = default.score(program, &s).expect("isolated machine scores");
        assert_eq!(score.value, 1.0, "{}", score.reason);
        assert!(!score.reason.contains("UNISOLATED"), "{}", score.reason);
    } else {
        let err = default.score(program, &s).expect_err("must refuse without isolation");
        assert!(matches!(err, RewardError::NoIsolation { .. }), "{err}");
        assert!(err.to_string().contains("code_unisolated"), "{err}");
        let err = run(&config(), "print(1)", b"").expect_err("run refuses too");
        assert!(matches!(err, RewardError::NoIsolation { .. }), "{err}");
        assert!(score.reason.contains("UNISOLATED"), "{}", score.reason);
    }
}

#[test]
fn adversarial_corpus_is_contained() {
    if !isolated() {
        return;
    }
    let cfg = config();
    let host_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let marker = format!("r1-escape-{}", std::process::id());
    let secret_value = secret();
    let dataset = std::env::temp_dir().join(format!("r1-dataset-{}.jsonl", std::process::id()));
    std::fs::write(&dataset, &secret_value).expect("write dataset");
    let cases: Vec<(&str, String, String)> = vec![
        ("infinite_loop.py", String::new(), "done".into()),
        ("sleep_forever.py", String::new(), "done".into()),
        ("setsid_sleep.py", String::new(), "done".into()),
        ("fork_bomb.py", String::new(), "done".into()),
        ("orphan.py", String::new(), "still here".into()),
        ("memory_bomb.py", String::new(), "done".into()),
        ("memory_bomb_procs.py", String::new(), "impossible".into()),
        ("network.py", "connected\n".into(), "connected".into()),
        ("write_outside.py", format!("{host_dir} {marker}\n"), marker.clone()),
        ("read_expected.py", String::new(), secret_value.clone()),
        ("read_dataset.py", format!("{}\n", dataset.display()), secret_value.clone()),
        ("kill_parent.py", String::new(), "escaped".into()),
        ("gpu_devices.py", String::new(), "opened".into()),
        ("exit_early.py", "1\n".into(), "1\n2\n3".into()),
        ("huge_output.py", String::new(), "x".into()),
        ("big_file.py", "written\n".into(), "written".into()),
    ];
    for (name, input, expected) in &cases {
        let program = corpus(name);
        let out = run(&cfg, &program, input.as_bytes()).expect("sandbox runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let passed = out.outcome == Outcome::Exited(0) && outputs_match(&out.stdout, expected);
        let shown: String = stdout.trim().chars().take(60).collect();
        println!("{name:22} outcome={:?} wall={:?} passed={passed} stdout={shown:?}", out.outcome, out.wall);
        assert!(!passed, "{name}: the attack passed the test (stdout {stdout:?})");
        assert!(out.wall < cfg.wall_time + Duration::from_secs(1), "{name}: ran {:?}", out.wall);
        assert_eq!(survivors_of(&out), Vec::<String>::new(), "{name}: processes left behind");
        match *name {
            "read_dataset.py" => assert!(stdout.contains("cannot read"), "{name}: {stdout}"),
            "kill_parent.py" => assert_eq!(stdout.trim(), "init alive", "the namespace's init survives"),
            "gpu_devices.py" => assert_eq!(stdout.trim(), "none"),
            "memory_bomb_procs.py" => {
                // The whole run's memory stays within the stated bound.
                let total: u64 = stdout.split_whitespace().last().and_then(|x| x.parse().ok()).expect("total");
                let bound = match memory_bound(&cfg) {
                    MemoryBound::Cgroup { memory_bytes, .. } => memory_bytes,
                    MemoryBound::PerProcess { total, .. } => total,
                };
                println!("  memory bomb got {total} MiB; bound {:?}", memory_bound(&cfg));
                assert!(total > 0 && total << 20 <= bound, "{total} MiB against a bound of {bound} bytes");
            }
            _ => {}
        }
        // Through the Reward API as well: score 0.
        let mut s = Sample::new();
        s.insert("tests".into(), serde_json::json!([{ "input": input, "output": expected }]));
        let reward = CodeReward { config: cfg.clone() };
        let score = reward.score(&format!("```python\n{program}\n```"), &s).expect("score");
        assert_eq!(score.value, 0.0, "{name}: {}", score.reason);
    }
    let _ = std::fs::remove_file(&dataset);
    for d in [host_dir, "/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/root", "/etc"] {
        let p = std::path::Path::new(d).join(&marker);
        assert!(!p.exists(), "write_outside.py escaped to {}", p.display());
    }
}

#[test]
fn holding_the_pipe_does_not_hang_the_scorer_and_verbose_programs_pass() {
    if !isolated() {
        return;
    }
    let cfg = config();
    // The answer is right and the main process exits 0; its detached child holding stdout is killed
    // with the namespace, so the run ends at once instead of at the wall-clock limit.
    let out = run(&cfg, &corpus("setsid_hold_pipe.py"), b"").expect("run");
    println!("setsid_hold_pipe outcome={:?} wall={:?}", out.outcome, out.wall);
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert!(outputs_match(&out.stdout, "done"));
    assert!(out.wall < cfg.wall_time, "the scorer waited for the pipe: {:?}", out.wall);
    assert_eq!(survivors_of(&out), Vec::<String>::new());
    // 8 MiB of stderr: read to the end (no broken pipe), the first 64 KiB kept.
    let out = run(&cfg, &corpus("huge_stderr.py"), b"21\n").expect("run");
    println!("huge_stderr outcome={:?} stderr={} bytes, kept {}", out.outcome, out.stderr_bytes, out.stderr_head.len());
    assert_eq!(out.outcome, Outcome::Exited(0));
    assert!(outputs_match(&out.stdout, "42"));
    assert_eq!(out.stderr_bytes, 8 << 20);
    assert_eq!(out.stderr_head.len(), cfg.stderr_keep_bytes);
}

#[test]
fn the_program_sees_only_its_directory_and_the_interpreter() {
    if !isolated() {
        return;
    }
    let cfg = config();
    let probe = "import os\nprint(sorted(os.listdir('/')))\nprint(sorted(os.listdir('/dev')))\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[0])\nprint(bool(os.statvfs('/').f_flag & os.ST_RDONLY), bool(os.statvfs('/usr').f_flag & os.ST_RDONLY), bool(os.statvfs('/dev').f_flag & os.ST_RDONLY))\nprint(os.getcwd(), os.path.exists(os.environ.get('HOST_DIR', '/nonexistent')))";
    let out = run(&cfg, probe, b"").expect("run");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text} / {}", out.stderr_head);
    let allowed = ["bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"];
    let top: Vec<String> =
        lines[0].trim_matches(|c| c == '[' || c == ']').split(", ").map(|x| x.trim_matches('\'').to_string()).collect();
    assert!(top.iter().all(|x| allowed.contains(&x.as_str())), "root holds {top:?}");
    assert_eq!(lines[1], "['full', 'null', 'random', 'urandom', 'zero']");
    assert_eq!(lines[2], "1", "the program sees only its own namespace's processes");
    assert_eq!(lines[3], "True True True", "/, /usr and /dev are read-only");
    assert!(lines[4].starts_with("/tmp/w "), "{}", lines[4]);
    // The host's files (this crate's sources) are not there.
    let look = format!("import os\nprint(os.path.exists('{}'))", env!("CARGO_MANIFEST_DIR"));
    let out = run(&cfg, &look, b"").expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "False");
}

#[test]
fn a_failed_isolation_set_up_is_an_error() {
    if !isolated() {
        return;
    }
    let mut cfg = config();
    // A path the init cannot bind (whitespace would split it) is refused, not skipped.
    let odd = std::env::temp_dir().join(format!("r1 ro {}", std::process::id()));
    std::fs::create_dir_all(&odd).expect("mkdir");
    cfg.ro_paths.push(odd.clone());
    let err = run(&cfg, "print(1)", b"").expect_err("set-up must fail");
    let _ = std::fs::remove_dir(&odd);
    println!("{err}");
    assert!(matches!(err, RewardError::SandboxSetup { .. }), "{err}");
}

#[test]
fn correct_program_passes_and_wrong_one_fails() {
    if !isolated() {
        return;
    }
    let reward = CodeReward { config: config() };
    let mut s = Sample::new();
    s.insert(
        "tests".into(),
        serde_json::json!([{ "input": "2\n", "output": "4\n" }, { "input": "21\n", "output": "42" }]),
    );
    let good = reward.score("Here:\n```python\nprint(int(input()) * 2)\n```", &s).expect("score");
    assert_eq!(good.value, 1.0, "{}", good.reason);
    let half = reward.score("```python\nx = int(input())\nprint(4 if x == 2 else 0)\n```", &s).expect("score");
    assert_eq!(half.value, 0.5, "{}", half.reason);
    let crash = reward.score("```python\nraise SystemExit(3)\n```", &s).expect("score");
    assert_eq!(crash.value, 0.0);
    let none = reward.score("no code", &s).expect("score");
    assert_eq!(none.value, 0.0);
    // The open-r1 zip hole: printing only the first line of a two-line answer fails.
    let tests = [TestCase { input: String::new(), output: "1\n2".into() }];
    assert_eq!(reward.pass_count("print(1)", &tests).expect("run"), 0);
    assert_eq!(reward.pass_count("print(1)\nprint(2)", &tests).expect("run"), 1);
    // A program whose interpreter does not exist fails: not a pass.
    let broken = CodeReward { config: SandboxConfig { interpreter: vec!["/nonexistent/python9".into()], ..config() } };
    let s0 = broken.score("```python\nprint(1)\n```", &s).expect("score");
    assert_eq!(s0.value, 0.0, "{}", s0.reason);
    // Missing tests is an error naming the field, not a score.
    let err = reward.score("```python\nprint(1)\n```", &Sample::new()).expect_err("no tests");
    assert!(err.to_string().contains("tests"), "{err}");
}

#[test]
fn fork_bomb_does_not_starve_a_concurrent_run() {
    if !isolated() {
        return;
    }
    // RLIMIT_NPROC counts per user (per run as root, per user namespace otherwise), so a bomb next door
    // cannot block this one.
    let cfg = config();
    let bomb = corpus("fork_bomb.py");
    let t = std::thread::spawn(move || run(&config(), &bomb, b"").expect("bomb run"));
    std::thread::sleep(Duration::from_millis(500));
    let tests = [TestCase { input: "20\n".into(), output: "40".into() }];
    let passed = CodeReward { config: cfg }.pass_count("print(int(input()) * 2)", &tests).expect("run");
    let bomb_out = t.join().expect("join");
    assert_ne!(bomb_out.outcome, Outcome::Exited(0));
    assert_eq!(passed, 1, "the correct program next to a fork bomb must still pass");
}

fn mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo").map_or(0, |m| m.lines().count())
}

fn temp_dirs() -> Vec<String> {
    let mine = format!("{TEMP_PREFIX}{}-", std::process::id());
    std::fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.starts_with(&mine)).collect()
        })
        .unwrap_or_default()
}

fn zombie_children() -> usize {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
                .filter(|st| {
                    // pid (comm) state ppid …
                    let rest = st.rsplit_once(')').map_or("", |(_, r)| r);
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    f.first() == Some(&"Z") && f.get(1) == Some(&me.as_str())
                })
                .count()
        })
        .unwrap_or(0)
}

/// 1,000 runs, as many at a time as the machine has cores, mixing correct programs with attacks that try
/// to outlive the run; afterwards no process, temp directory, mount or zombie is left. Slow (about a minute
/// on two cores): `cargo test -p rewards --test sandbox -- --ignored --nocapture thousand`.
#[test]
#[ignore = "slow: run by name (see the doc comment)"]
fn thousand_runs_leave_nothing_behind() {
    if !isolated() {
        return;
    }
    let cfg = SandboxConfig { wall_time: Duration::from_secs(2), ..config() };
    let programs = [
        ("print(int(input()) * 2)".to_string(), true),
        (corpus("setsid_hold_pipe.py").replace("print(\"done\")", "print(int(input()) * 2)"), true),
        (corpus("orphan.py"), false),
        (corpus("fork_bomb.py"), false),
        (corpus("setsid_sleep.py"), false),
    ];
    let (mounts_before, dirs_before) = (mounts(), temp_dirs());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let passed = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let start = std::time::Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= 1000 {
                        return;
                    }
                    // Mostly quick programs; one in 10 an orphan or pipe holder, one in 50 a bomb or sleeper.
                    let k = match i % 50 {
                        0 => 3,
                        25 => 4,
                        x if x % 10 == 5 => 2,
                        x if x % 10 == 7 => 1,
                        _ => 0,
                    };
                    let (prog, should_pass) = &programs[k];
                    match run(&cfg, prog, b"21\n") {
                        Ok(out) => {
                            let ok = out.outcome == Outcome::Exited(0) && outputs_match(&out.stdout, "42");
                            if ok {
                                passed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            if ok != *should_pass {
                                failures.lock().expect("lock").push(format!("run {i} kind {k}: {:?}", out.outcome));
                            }
                        }
                        Err(e) => failures.lock().expect("lock").push(format!("run {i}: {e}")),
                    }
                }
            });
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    let prefix = format!("{}-", std::process::id());
    let (left, mounts_after, dirs_after, zombies) = (survivors(&prefix), mounts(), temp_dirs(), zombie_children());
    println!(
        "1000 runs, {workers} at a time, in {:?}: {} passed; processes left {}, mounts {mounts_before} -> {mounts_after}, temp dirs left {}, zombies {zombies}",
        start.elapsed(),
        passed.load(std::sync::atomic::Ordering::SeqCst),
        left.len(),
        dirs_after.len().saturating_sub(dirs_before.len()),
    );
    let failures = failures.into_inner().expect("lock");
    assert!(failures.is_empty(), "{} unexpected verdicts: {:?}", failures.len(), &failures[..failures.len().min(10)]);
    assert_eq!(left, Vec::<String>::new(), "processes left behind");
    assert_eq!(mounts_after, mounts_before, "mounts left behind");
    assert_eq!(dirs_after, dirs_before, "temp directories left behind");
    assert_eq!(zombies, 0, "unreaped children");
}
