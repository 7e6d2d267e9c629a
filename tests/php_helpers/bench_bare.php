<?php
// The baseline of the speed test: a bare for loop calling the same handler, in ns per call.
require __DIR__ . '/handlers.php';

function bare_loop(int $n): float
{
    $handler = new \Fixtures\Jobs\Noop();
    $start = hrtime(true);
    for ($i = 0; $i < $n; $i++) {
        $handler->run();
    }
    return (hrtime(true) - $start) / $n;
}

printf("%.3f\n", bare_loop((int) ($argv[1] ?? 1000000)));
