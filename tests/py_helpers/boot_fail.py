raise RuntimeError("bad config")
