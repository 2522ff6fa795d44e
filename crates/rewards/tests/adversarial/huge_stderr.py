# Not an attack: a correct but verbose program writes 8 MiB of diagnostics to stderr, then the answer. It
# must pass (a scorer that stops reading stderr would kill it with a broken pipe).
import sys
line = "x" * 1023 + "\n"
for _ in range(8 * 1024):
    sys.stderr.write(line)
sys.stderr.flush()
print(int(input()) * 2)
