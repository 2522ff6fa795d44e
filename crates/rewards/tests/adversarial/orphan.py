# Attack: leave a detached child behind (new session, parent exits 0 at once) that would print later.
import os, sys, time
if os.fork() == 0:
    os.setsid()
    time.sleep(30)
    print("still here")
    sys.exit(0)
sys.exit(0)
