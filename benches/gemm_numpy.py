"""The GEMM peer: numpy's f32 matmul (OpenBLAS) on the same sizes as `tensor`'s gemm example.

Prints `n GFLOP/s` per line (best of repeats), as the Rust side does; `cargo xtask bench gemm`
runs both and prints the ratio.
"""
import time

import numpy as np

for n in (256, 512, 1024, 2048):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flops = 2.0 * n**3
    reps = int(min(300, max(10, 8e10 / flops)))
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    print(n, f"{flops / best / 1e9:.1f}")
