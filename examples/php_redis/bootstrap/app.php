<?php
/**
 * The application's bootstrap, loaded once per worker life (gsuper: bootstrap = ...):
 * builds the service container from the environment.
 *
 *   REDIS_HOST, REDIS_PORT   default 127.0.0.1:6379
 *   QUEUE                    the Redis list of jobs, default "jobs"
 *   JOB_MS                   milliseconds each job takes to "process", default 0
 */

declare(strict_types=1);

use App\Container;

$app = new Container();

$app->set('config', static fn (): array => [
    'redis_host' => getenv('REDIS_HOST') ?: '127.0.0.1',
    'redis_port' => (int) (getenv('REDIS_PORT') ?: 6379),
    'queue' => getenv('QUEUE') ?: 'jobs',
    'job_ms' => (int) (getenv('JOB_MS') ?: 0),
]);

$app->set('redis', static function (Container $app): \Redis {
    $config = $app->get('config');
    $redis = new \Redis();
    $redis->connect($config['redis_host'], $config['redis_port'], 2.0); // throws if Redis is down
    // Longer than the consumer's 1 s blocking pop, short enough to notice a hung server.
    $redis->setOption(\Redis::OPT_READ_TIMEOUT, 5);
    return $redis;
});

Container::setInstance($app);

return $app;
