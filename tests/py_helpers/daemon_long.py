"""A daemon-mode script that runs until stopped."""

import time

print("daemon start", flush=True)
try:
    time.sleep(60)
finally:
    print("daemon cleanup", flush=True)
