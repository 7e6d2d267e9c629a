<?php
// Sends notes 1..N (argv[1]) to the async transport.
require __DIR__ . '/../src/messenger.php';
$transport = transport();
for ($i = 1; $i <= (int) $argv[1]; $i++) {
    $transport->send(new Symfony\Component\Messenger\Envelope(new Note($i)));
}
