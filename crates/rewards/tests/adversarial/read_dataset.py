# Attack: read the dataset file with the expected outputs (its host path arrives on stdin) and print it.
import sys
path = sys.stdin.readline().strip()
try:
    print(open(path).read().strip())
except OSError as e:
    print("cannot read:", e)
