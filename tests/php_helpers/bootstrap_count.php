<?php
// A bootstrap hook that notes each time it is loaded.
file_put_contents((string) getenv('TEST_LOG'), "bootstrap\n", FILE_APPEND | LOCK_EX);
$bootstrapGlobal = 'set by the bootstrap';
