//! The adversarial corpus (`tests/adversarial/*.py`): every attack is contained, scores 0 and leaves no
//! process behind; a correct program still passes (so the checks can fail).

use rewards::code::{
    CodeReward, Isolation, Outcome, RUN_ID_ENV, SandboxConfig, TestCase, isolation, outputs_match, run,
};
use rewards::{Reward, Sample};
use std::time::Duration;

fn corpus(name: &str) -> String {
    let p = format!("{}/tests/adversarial/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// Processes (any user) whose environment carries this run's id.
fn survivors(run_id: &str) -> Vec<String> {
    let needle = format!("{RUN_ID_ENV}={run_id}\0");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(env) = std::fs::read(e.path().join("environ"))
            && env.windows(needle.len()).any(|w| w == needle.as_bytes())
        {
            out.push(name);
        }
    }
    out
}

fn secret() -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    format!("SECRET-{:x}", t ^ 0x5a5a_1234_9876)
}

fn config() -> SandboxConfig {
    SandboxConfig { wall_time: Duration::from_secs(3), cpu_secs: 2, ..SandboxConfig::default() }
}

#[test]
fn adversarial_corpus_is_contained() {
    match isolation() {
        Isolation::Namespaces => {
            println!("isolation: network/PID/mount namespaces + unprivileged uid per run")
        }
        Isolation::LimitsOnly(why) => {
            println!("isolation: LIMITS ONLY, no network namespace: {why}")
        }
    }
    let cfg = config();
    let host_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests");
    let marker = format!("r1-escape-{}", std::process::id());
    let cases: Vec<(&str, String, String)> = vec![
        ("infinite_loop.py", String::new(), "done".into()),
        ("sleep_forever.py", String::new(), "done".into()),
        ("fork_bomb.py", String::new(), "done".into()),
        ("orphan.py", String::new(), "still here".into()),
        ("memory_bomb.py", String::new(), "done".into()),
        ("network.py", "connected\n".into(), "connected".into()),
        ("write_outside.py", format!("{host_dir} {marker}\n"), marker.clone()),
        ("read_expected.py", String::new(), secret()),
        ("exit_early.py", "1\n".into(), "1\n2\n3".into()),
        ("huge_output.py", String::new(), "x".into()),
        ("big_file.py", "written\n".into(), "written".into()),
    ];
    for (name, input, expected) in &cases {
        let program = corpus(name);
        let out = run(&cfg, &program, input.as_bytes()).expect("sandbox runs");
        let passed = out.outcome == Outcome::Exited(0) && outputs_match(&out.stdout, expected);
        println!("{name:18} outcome={:?} wall={:?} passed={passed}", out.outcome, out.wall);
        assert!(!passed, "{name}: the attack passed the test (stdout {:?})", String::from_utf8_lossy(&out.stdout));
        assert!(out.wall < cfg.wall_time + Duration::from_secs(2), "{name}: ran {:?}", out.wall);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(survivors(&out.run_id), Vec::<String>::new(), "{name}: processes left behind");
        // Through the Reward API as well: score 0.
        let mut s = Sample::new();
        s.insert("tests".into(), serde_json::json!([{ "input": input, "output": expected }]));
        let reward = CodeReward { config: cfg.clone() };
        let score = reward.score(&format!("```python\n{program}\n```"), &s).expect("score");
        assert_eq!(score.value, 0.0, "{name}: {}", score.reason);
    }
    for d in [host_dir, "/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/root", "/etc"] {
        let p = std::path::Path::new(d).join(&marker);
        assert!(!p.exists(), "write_outside.py escaped to {}", p.display());
    }
    match isolation() {
        Isolation::Namespaces => {
            // In the namespace the program sees only its own processes.
            let out = run(&cfg, "import os\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit())[0])", b"")
                .expect("run");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
            // `/` is read-only in the sandbox's mount namespace.
            let ro = "import os\nprint(bool(os.statvfs('/').f_flag & os.ST_RDONLY))";
            let out = run(&cfg, ro, b"").expect("run");
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "True");
        }
        Isolation::LimitsOnly(_) => {}
    }
}

#[test]
fn correct_program_passes_and_wrong_one_fails() {
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
    assert_eq!(reward.pass_count("print(1)", &tests), 0);
    assert_eq!(reward.pass_count("print(1)\nprint(2)", &tests), 1);
    // A test that cannot run (no such interpreter) fails: not an error, not a pass.
    let broken = CodeReward { config: SandboxConfig { interpreter: vec!["/nonexistent/python9".into()], ..config() } };
    let s0 = broken.score("```python\nprint(1)\n```", &s).expect("score");
    assert_eq!(s0.value, 0.0, "{}", s0.reason);
    // Missing tests is an error naming the field, not a score.
    let err = reward.score("```python\nprint(1)\n```", &Sample::new()).expect_err("no tests");
    assert!(err.to_string().contains("tests"), "{err}");
}

#[test]
fn fork_bomb_does_not_starve_a_concurrent_run() {
    // RLIMIT_NPROC counts per user; each run has its own uid, so a bomb next door cannot block this one.
    let cfg = config();
    let bomb = corpus("fork_bomb.py");
    let t = std::thread::spawn(move || run(&config(), &bomb, b"").expect("bomb run"));
    std::thread::sleep(Duration::from_millis(500));
    let tests = [TestCase { input: "20\n".into(), output: "40".into() }];
    let passed = CodeReward { config: cfg }.pass_count("print(int(input()) * 2)", &tests);
    let bomb_out = t.join().expect("join");
    assert_ne!(bomb_out.outcome, Outcome::Exited(0));
    assert_eq!(passed, 1, "the correct program next to a fork bomb must still pass");
}
