<?php
// A bootstrap that takes long (e.g. waiting for a database): a stop must not wait for it.
file_put_contents((string) getenv('TEST_LOG'), "bootstrap start\n", FILE_APPEND | LOCK_EX);
sleep(30);
file_put_contents((string) getenv('TEST_LOG'), "bootstrap end\n", FILE_APPEND | LOCK_EX);
