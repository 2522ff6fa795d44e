"""Side-by-side: r1_rewards.accuracy_reward against Math-Verify behind the same TRL-style call, on the
conformance table's (gold, completion) pairs. Prints answers/s for each and the ratio, and how often each
agrees with the table's verdicts.

    python bench/bench_math_verify.py [--rows crates/rewards/tests/conformance.jsonl] [--repeat 3]
"""

import argparse
import json
import os
import time

import r1_rewards
from math_verify import parse, verify


def mv_accuracy_reward(completions, solution, **kwargs):
    """The same TRL-style reward over Math-Verify with its default extraction (LaTeX and plain
    expressions) for both sides: parse, verify; None when the gold does not parse. A bare gold answer is put
    in `$…$` first, as Math-Verify's LaTeX extraction needs delimiters."""
    out = []
    for content, sol in zip(completions, solution):
        gold = parse(sol if ("$" in sol or "\\boxed" in sol) else f"${sol}$")
        if len(gold) == 0:
            out.append(None)
            continue
        pred = parse(content)
        try:
            out.append(float(verify(gold, pred)))
        except Exception:
            out.append(0.0)
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=os.path.join(here, "..", "..", "crates", "rewards", "tests", "conformance.jsonl"))
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = [json.loads(l) for l in open(args.rows) if l.strip()]
    golds = [r["gold"] for r in rows]
    comps = [r["completion"] for r in rows]
    want = [1.0 if r["correct"] else 0.0 for r in rows]
    n = len(rows)

    def timed(f):
        best = None
        out = None
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = f()
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        return best, out

    t_mv, mv = timed(lambda: mv_accuracy_reward(comps, golds))
    # One call per answer (Python overhead on every answer, one core), and one batched call (rayon).
    t_one, ours = timed(lambda: [r1_rewards.accuracy_reward([c], [g])[0] for c, g in zip(comps, golds)])
    t_batch, ours_b = timed(lambda: r1_rewards.accuracy_reward(comps, golds))
    assert ours == ours_b
    agree = lambda got: sum(1 for a, b in zip(got, want) if a == b)
    print(f"rows: {n} (conformance table), best of {args.repeat}, cores: {os.cpu_count()}")
    print(f"math-verify     : {n / t_mv:10.1f} answers/s  ({1e3 * t_mv / n:.3f} ms each)  agrees with table: {agree(mv)}/{n}")
    print(f"r1_rewards 1/call: {n / t_one:10.1f} answers/s  ({1e3 * t_one / n:.3f} ms each)  agrees with table: {agree(ours)}/{n}")
    print(f"r1_rewards batch : {n / t_batch:10.1f} answers/s  ({1e3 * t_batch / n:.3f} ms each)")
    print(f"ratio, one call per answer: {t_mv / t_one:.0f}x; batched: {t_mv / t_batch:.0f}x")


if __name__ == "__main__":
    main()
