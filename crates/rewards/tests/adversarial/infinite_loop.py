# Attack: never terminate. Must be stopped by the CPU or wall-clock limit.
while True:
    pass
