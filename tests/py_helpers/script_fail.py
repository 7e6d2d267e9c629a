"""A script that always fails."""

raise KeyError("missing thing")
