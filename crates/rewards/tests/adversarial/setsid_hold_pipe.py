# Attack: print the right answer and exit 0, but leave a child in a new session that holds stdout open
# and sleeps, so that a scorer waiting for end-of-file would hang past its limit.
import os, sys, time
if os.fork() == 0:
    os.setsid()
    time.sleep(60)
    sys.exit(0)
print("done")
sys.stdout.flush()
