"""A bootstrap module (GSUPER_BOOTSTRAP=boot_module): imported once."""

import os

print(f"boot module loaded pid {os.getpid()}")
