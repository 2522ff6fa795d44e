# Attack: open GPU (and other) device nodes to reach hardware; print which opened.
import os
opened = []
for p in ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-caps", "/dev/dri/card0",
          "/dev/dri/renderD128", "/dev/kfd", "/dev/mem", "/dev/kmsg", "/dev/vda", "/dev/sda"]:
    try:
        fd = os.open(p, os.O_RDWR)
        os.close(fd)
        opened.append(p)
    except OSError:
        pass
print("opened " + " ".join(opened) if opened else "none")
