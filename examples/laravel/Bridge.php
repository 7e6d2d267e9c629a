<?php

namespace Gsuper\Laravel;

use Illuminate\Contracts\Foundation\Application;
use Illuminate\Queue\Worker;
use Illuminate\Queue\WorkerOptions;

/**
 * One queued job per gsuper request, through Laravel's own worker
 * (`Illuminate\Queue\Worker::runNextJob`), so jobs keep Laravel's semantics: attempts and
 * retries (`$tries`, backoff), failed jobs, events, the exception handler.
 *
 * Settings (environment), as `artisan queue:work` options:
 *   LARAVEL_QUEUE_CONNECTION  the connection (default: queue.default of the app's config)
 *   LARAVEL_QUEUE             the queue names, comma-separated (default: the connection's queue)
 *   LARAVEL_QUEUE_TRIES       --tries (default 1; a job's own $tries wins)
 *   LARAVEL_QUEUE_BACKOFF     --backoff in seconds (default 0)
 *   LARAVEL_QUEUE_TIMEOUT     --timeout in seconds (default 60; gsuper's request_timeout also guards)
 * gsuper does the rest of queue:work's job: max_request (--max-jobs), memory_limit (--memory),
 * usleep (--sleep, between requests), graceful stop.
 */
final class Bridge
{
    private static Application $app;
    private static Worker $worker;
    private static string $connection;
    private static string $queue;
    private static WorkerOptions $options;

    public static function boot(Application $app): void
    {
        self::$app = $app;
        $config = $app['config'];
        self::$connection = getenv('LARAVEL_QUEUE_CONNECTION') ?: $config->get('queue.default');
        self::$queue = getenv('LARAVEL_QUEUE') ?: $config->get('queue.connections.' . self::$connection . '.queue', 'default');
        self::$options = new WorkerOptions(
            'default',
            (int) (getenv('LARAVEL_QUEUE_BACKOFF') ?: 0),
            PHP_INT_MAX,            // memory: gsuper's memory_limit guards
            (int) (getenv('LARAVEL_QUEUE_TIMEOUT') ?: 60),
            0,                      // sleep when empty: the pop blocks (block_for), gsuper's usleep paces
            (int) (getenv('LARAVEL_QUEUE_TRIES') ?: 1),
        );
        self::$worker = $app->make('queue.worker');
        self::warmUp($app);
    }

    /**
     * Classes the first job loads (autoload and compile: 27-59 ms here), loaded once at boot:
     * warm, in the template, so that a forked worker's first job does not pay for them (an
     * app can do the same for its own job classes in its bootstrap). No connection is opened.
     */
    private static function warmUp(Application $app): void
    {
        $app->make(\Illuminate\Contracts\Bus\Dispatcher::class);
        $app['queue']->connection(self::$connection); // the queue object; its client connects lazily
        foreach (self::FIRST_JOB_CLASSES as $class) {
            class_exists($class); // (loads its interfaces and traits with it)
        }
        \Illuminate\Support\Carbon::now(); // Carbon's first use sets up its translator and aliases
    }

    private const FIRST_JOB_CLASSES = [
        \Illuminate\Redis\Connectors\PhpRedisConnector::class,
        \Illuminate\Redis\Connectors\PredisConnector::class,
        \Illuminate\Redis\Connections\PhpRedisConnection::class,
        \Illuminate\Support\ConfigurationUrlParser::class,
        \Illuminate\Queue\LuaScripts::class,
        \Illuminate\Queue\Jobs\RedisJob::class,
        \Illuminate\Queue\Jobs\DatabaseJob::class,
        \Illuminate\Queue\Jobs\JobName::class,
        \Illuminate\Queue\CallQueuedHandler::class,
        \Illuminate\Queue\InteractsWithQueue::class,
        \Illuminate\Bus\Queueable::class,
        \Illuminate\Pipeline\Pipeline::class,
        \Illuminate\Queue\Events\JobProcessing::class,
        \Illuminate\Queue\Events\JobProcessed::class,
        \Illuminate\Queue\Events\JobExceptionOccurred::class,
        \Illuminate\Queue\Events\JobFailed::class,
        \Illuminate\Queue\MaxAttemptsExceededException::class,
    ];

    /** Each worker its own connections (see after_fork.php). */
    public static function afterFork(): void
    {
        $app = self::$app;
        if ($app->resolved('redis')) {
            $app['redis']->purge();
        }
        if ($app->resolved('db')) {
            foreach (array_keys($app['db']->getConnections()) as $name) {
                $app['db']->purge($name);
            }
        }
        if ($app->resolved('queue')) {
            // The queue manager caches connection objects that hold the Redis client.
            (function (): void {
                $this->connections = [];
            })->call($app['queue']);
        }
    }

    /** One request: the next job, if there is one within block_for. */
    public static function run(): void
    {
        self::$worker->runNextJob(self::$connection, self::$queue, self::$options);
    }

    /** The application (for after_fork files of an app). */
    public static function app(): Application
    {
        return self::$app;
    }
}
