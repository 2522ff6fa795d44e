#!/usr/bin/env python3
"""Side-by-side speed: Math-Verify (Python, pip) vs `r1 rewards score --reward accuracy` on the same answers.

Builds a fixed, seeded answer set (integers with separators, fractions, roots, pi, polynomials, intervals,
sets, prose with a final number; about a third wrong), runs Math-Verify's parse+verify on every pair on one
core, runs our release binary single-threaded (RAYON_NUM_THREADS=1) on the same pairs repeated, and prints
both answers/s and the ratio by CPU time (robust on a shared machine) and by wall time, and how often the two
verdicts agree.

Usage: python3 benches/rewards_vs_math_verify.py [--n 400] [--repeat 200] [--r1 target/release/r1]
Needs: pip install math-verify; a release build (built here with `cargo build --release -j1 -p r1` if absent).
"""
import argparse, json, os, random, resource, subprocess, sys, tempfile, time

PROSE = ("Let me think step by step. First we set up the equation from the statement, then we simplify "
         "both sides and check the arithmetic twice. ")

def answer_set(n, seed=7):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = i % 8
        wrong = rng.random() < 0.33
        d = 1 if wrong else 0
        if k == 0:
            v = rng.randint(1000, 9_999_999)
            gold, pred = str(v), f"{v + d:,}"
        elif k == 1:
            p, q = rng.randint(1, 50), rng.randint(2, 50)
            gold, pred = f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{2 * p + d}}}{{{2 * q}}}"
        elif k == 2:
            a = rng.randint(2, 9)
            gold, pred = f"{a}\\sqrt{{2}}", f"\\sqrt{{{2 * a * a + d}}}"
        elif k == 3:
            a = rng.randint(2, 9)
            gold, pred = f"\\frac{{{a}\\pi}}{{3}}", f"\\frac{{{a + d}}}{{3}}\\pi"
        elif k == 4:
            a = rng.randint(1, 9)
            gold, pred = f"(x+{a})^2", f"x^2+{2 * a + d}x+{a * a}"
        elif k == 5:
            a, b = sorted(rng.sample(range(-9, 10), 2))
            gold, pred = f"(-\\infty,{a})\\cup({b},\\infty)", f"({b + d},\\infty)\\cup(-\\infty,{a})"
        elif k == 6:
            xs = rng.sample(range(1, 30), 3)
            ys = list(reversed(xs)); ys[0] += d
            gold, pred = "\\{" + ",".join(map(str, xs)) + "\\}", "\\{" + ",".join(map(str, ys)) + "\\}"
        else:
            v = rng.randint(1, 500)
            out.append((str(v), f"{PROSE}So in total there are {v + d} apples."))
            continue
        out.append((gold, f"{PROSE}Therefore the answer is $\\boxed{{{pred}}}$."))
    return out

def run_math_verify(pairs):
    from math_verify import parse, verify
    verdicts = []
    t, c = time.perf_counter(), time.process_time()
    for gold, completion in pairs:
        try:
            verdicts.append(bool(verify(parse("$" + gold + "$"), parse(completion))))
        except Exception:
            verdicts.append(False)
    return time.perf_counter() - t, time.process_time() - c, verdicts

def run_ours(r1, pairs, repeat):
    with tempfile.TemporaryDirectory() as d:
        inp, out = os.path.join(d, "in.jsonl"), os.path.join(d, "out.jsonl")
        with open(inp, "w") as f:
            for _ in range(repeat):
                for gold, completion in pairs:
                    f.write(json.dumps({"completion": completion, "answer": gold}) + "\n")
        env = dict(os.environ, RAYON_NUM_THREADS="1")
        t = time.perf_counter()
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([r1, "rewards", "score", "--input", inp, "--output", out, "--reward", "accuracy"],
                       check=True, env=env, stderr=subprocess.DEVNULL)
        r1u = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter() - t
        cpu = (r1u.ru_utime - r0.ru_utime) + (r1u.ru_stime - r0.ru_stime)
        with open(out) as f:
            verdicts = [json.loads(l)["rewards"]["accuracy"] == 1.0 for l in f][: len(pairs)]
    return wall, cpu, verdicts

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=250)
    ap.add_argument("--r1", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "target"), "release", "r1"))
    a = ap.parse_args()
    if not os.path.exists(a.r1):
        subprocess.run(["cargo", "build", "--release", "-j1", "-p", "r1"], check=True)
    pairs = answer_set(a.n)
    mv_wall, mv_cpu, mv_v = run_math_verify(pairs)
    our_wall, our_cpu, our_v = run_ours(a.r1, pairs, a.repeat)
    n_mv, n_ours = len(pairs), len(pairs) * a.repeat
    agree = sum(x == y for x, y in zip(mv_v, our_v))
    print(f"answers: {len(pairs)} distinct ({sum(our_v)} judged correct by r1, {sum(mv_v)} by Math-Verify)")
    print(f"math-verify: {n_mv} answers, CPU {mv_cpu:.2f}s = {n_mv / mv_cpu:.1f} answers/s "
          f"(wall {mv_wall:.2f}s = {n_mv / mv_wall:.1f}/s; one process)")
    print(f"r1:          {n_ours} answers, CPU {our_cpu:.2f}s = {n_ours / our_cpu:.0f} answers/s "
          f"(wall {our_wall:.2f}s = {n_ours / our_wall:.0f}/s; 1 thread, whole CLI incl. JSON I/O)")
    print(f"ratio (CPU time): {(n_ours / our_cpu) / (n_mv / mv_cpu):.0f}x")
    print(f"ratio (wall):     {(n_ours / our_wall) / (n_mv / mv_wall):.0f}x")
    print(f"verdict agreement: {agree}/{len(pairs)}")
    for (g, c), x, y in zip(pairs, mv_v, our_v):
        if x != y:
            print(f"  differ: gold={g!r} pred=...{c[-50:]!r} math-verify={x} r1={y}")

if __name__ == "__main__":
    sys.exit(main())
