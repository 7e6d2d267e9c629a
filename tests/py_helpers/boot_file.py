"""A bootstrap file: defines names the script sees; says when it is loaded."""

import os

GREETING = "hi"
print(f"boot file loaded pid {os.getpid()}")
