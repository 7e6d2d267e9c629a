<?php
/**
 * Push N jobs (App\Jobs\Stamp) onto the example's queue: php push.php N [FAIL_TIMES]
 * (REDIS_PORT as for the workers). Job ids are 1..N, or JOB_PREFIX1..N.
 */
require __DIR__ . '/autoload.php';
$app = require __DIR__ . '/app/bootstrap/app.php';
$app->make(Illuminate\Contracts\Console\Kernel::class)->bootstrap();
$queue = $app['queue']->connection();
$n = (int) ($argv[1] ?? 1);
$fail = (int) ($argv[2] ?? 0);
$prefix = getenv('JOB_PREFIX') ?: '';
for ($i = 1; $i <= $n; $i++) {
    $queue->push(new App\Jobs\Stamp($prefix . $i, $fail));
}
