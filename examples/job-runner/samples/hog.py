# A job that wants more memory than it should get: grabs 16 MiB at a time, touching every
# page, until the sandbox's memory limit stops it (the OOM killer, inside the sandbox only).
import sys

held = []
for i in range(1, 129):
    held.append(bytearray(16 * 1024 * 1024))
    print(f"holding {16 * i} MiB", flush=True)
print("never stopped: is there a memory limit?")
sys.exit(1)
