"""Bootstrap hook of the consumer example: loaded once per worker life, before the first job.

Put here what is costly or must happen once: logging setup, configuration, connections.
"""

import logging
import os
import sys

logging.basicConfig(
    stream=sys.stdout,
    level=os.environ.get("LOG_LEVEL", "INFO"),
    # the master prefixes each line of the log with the time and the worker index
    format=f"consumer#{os.environ.get('GSUPER_WORKER', '0')} %(levelname)s %(message)s",
)
logging.getLogger("consumer").info("bootstrap loaded (pid %d)", os.getpid())
