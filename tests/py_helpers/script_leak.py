"""Run per request: globals must be fresh each time, but bootstrap names visible."""

print("LEAKED" if "leaked_var" in globals() else "fresh", GREETING, __name__)  # noqa: F821
leaked_var = 1
