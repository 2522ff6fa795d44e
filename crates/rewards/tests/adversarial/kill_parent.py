# Attack: kill the parent, the namespace's init and everything else that can be signalled, then report
# whether init survived (stdout "escaped" would mean the supervisor is gone).
import os, signal, time
for target in (os.getppid(), 1, -1):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError:
        pass
time.sleep(0.3)
print("init alive" if os.path.exists("/proc/1") else "escaped")
