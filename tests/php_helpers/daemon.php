<?php
// A daemon-mode script: one long run. Exits with DAEMON_EXIT if set, else returns normally.
file_put_contents((string) getenv('TEST_LOG'), "daemon ran\n", FILE_APPEND | LOCK_EX);
$code = getenv('DAEMON_EXIT');
if ($code !== false && $code !== '') {
    exit((int) $code);
}
