<?php
return [
    'default' => 'redis',
    'connections' => [
        // block_for: a pop waits up to 1 s for a job (then the worker checks for a stop).
        'redis' => ['driver' => 'redis', 'connection' => 'default', 'queue' => 'default', 'retry_after' => 90, 'block_for' => 1],
    ],
    // Failed jobs land in a Redis-free log here; a real app keeps its database driver.
    'failed' => ['driver' => 'null'],
];
