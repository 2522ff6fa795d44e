# Attack: fork bomb. The process limit must stop it and no process may outlive the run.
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
