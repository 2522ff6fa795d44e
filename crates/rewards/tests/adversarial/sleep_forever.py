# Attack: block without using CPU (a CPU limit alone does not stop it); the wall-clock limit must.
import time
time.sleep(10_000)
