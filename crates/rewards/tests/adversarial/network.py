# Attack: reach the network. Prints the expected output only if a connection succeeds.
import socket, sys
for host, port in [("1.1.1.1", 53), ("8.8.8.8", 53), ("93.184.216.34", 80)]:
    try:
        s = socket.create_connection((host, port), timeout=2)
        print(sys.stdin.readline().strip())
        sys.exit(0)
    except OSError:
        pass
sys.exit(1)
