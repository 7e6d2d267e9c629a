"""A daemon-mode script: runs once and exits with DAEMON_EXIT."""

import os
import sys

if __name__ == "__main__":
    print(f"daemon run {__name__} argv0 {os.path.basename(sys.argv[0])}")
    sys.exit(int(os.environ.get("DAEMON_EXIT", "0")))
