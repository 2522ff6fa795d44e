# Attack: leave the process group (setsid) so a group kill misses it, keep the pipes open and sleep.
import os, time
os.setsid()
time.sleep(60)
print("done")
