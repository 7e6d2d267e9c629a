<?php
// A per-request script: a variable set by one request must not be seen by the next.
$seen = isset($carried) ? 'leak' : 'clean';
$carried = true;
// The bootstrap's globals are reachable the usual way, with `global`.
global $bootstrapGlobal;
file_put_contents((string) getenv('TEST_LOG'), "$seen " . ($bootstrapGlobal ?? 'none') . "\n", FILE_APPEND | LOCK_EX);
