<?php
/**
 * Push N jobs onto the queue: php produce.php N [PREFIX]
 * The job ids are PREFIX-1 .. PREFIX-N (default prefix job-PID); same environment as the workers.
 */

declare(strict_types=1);

require __DIR__ . '/vendor/autoload.php';
$app = require __DIR__ . '/bootstrap/app.php';

$count = max(0, (int) ($argv[1] ?? 10));
$prefix = $argv[2] ?? 'job-' . getmypid();
$redis = $app->get('redis');
$queue = $app->get('config')['queue'];

// LPUSH here and BRPOPLPUSH (right end) in the consumer: first in, first out.
for ($first = 1; $first <= $count; $first += 1000) { // 1000 ids per command
    $ids = [];
    for ($i = $first; $i <= min($count, $first + 999); $i++) {
        $ids[] = "$prefix-$i";
    }
    $redis->lPush($queue, ...$ids);
}
echo "queued $count jobs on $queue\n";
