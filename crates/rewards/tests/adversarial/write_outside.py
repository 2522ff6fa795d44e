# Attack: write outside the private directory. stdin names a host directory and a marker; prints the marker
# (the expected output) if any write outside the working directory succeeded.
import os, sys
host_dir, marker = sys.stdin.read().split()
ok = False
for d in [host_dir, "/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/root", "/etc", os.path.expanduser("~")]:
    try:
        with open(os.path.join(d, marker), "w") as f:
            f.write("escaped")
        ok = ok or d != os.getcwd()
    except OSError:
        pass
if ok:
    print(marker)
