<?php
// A real PHP fatal error: not an exception, the process dies (exit code 255).
file_put_contents((string) getenv('TEST_LOG'), "request\n", FILE_APPEND | LOCK_EX);
trigger_error('fatal on purpose', E_USER_ERROR);
