"""gsuper: a process supervisor on gevent for PHP queue consumers, Python and shell scripts."""

__version__ = "0.2.0"
