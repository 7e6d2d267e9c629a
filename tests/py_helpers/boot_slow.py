"""A bootstrap that takes long: a stop must end it cleanly."""

import time

print("boot start", flush=True)
time.sleep(30)
print("boot end")
