# Attack: a memory bomb spread over as many processes as allowed; each child touches as much memory as it
# can get (in 16 MiB steps, up to 2 GiB) and reports it; the parent prints the total in MiB.
import os, sys
per = []
r, w = os.pipe()
kids = 0
for _ in range(64):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.close(r)
        got = 0
        blocks = []
        try:
            while got < 2048:
                blocks.append(bytearray(16 << 20))
                got += 16
        except MemoryError:
            pass
        os.write(w, f"{got}\n".encode())
        os._exit(0)
    kids += 1
os.close(w)
data = b""
while True:
    chunk = os.read(r, 4096)
    if not chunk:
        break
    data += chunk
for _ in range(kids):
    try:
        os.wait()
    except ChildProcessError:
        break
total = sum(int(x) for x in data.split())
print(f"processes {kids} total_mib {total}")
