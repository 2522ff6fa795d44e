# Attack: flood stdout. The output limit must stop it.
line = "x" * 65536
while True:
    print(line)
