# Attack: fill the disk. The file-size limit must stop it; prints the expected output only if 64 MiB got written.
import sys
want = sys.stdin.readline().strip()
with open("big.bin", "wb") as f:
    for _ in range(64):
        f.write(b"\0" * (1 << 20))
print(want)
