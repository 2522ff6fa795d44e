# Attack: allocate memory without bound. The address-space limit must stop it.
blocks = []
while True:
    blocks.append(bytearray(64 << 20))
