# Attack: print only the first expected line and exit 0 before the rest (open-r1 compared line pairs with zip,
# so this passed there).
import sys
print(sys.stdin.readline().strip())
sys.exit(0)
