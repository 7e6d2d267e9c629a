<?php

declare(strict_types=1);

namespace App\Jobs;

use App\Container;

/**
 * Takes jobs from a Redis list with the reliable-queue pattern (gsuper:
 * handler = App\Jobs\Consumer::handle). gsuper creates one instance per worker life and calls
 * handle() once per request.
 *
 * A job is moved atomically from the queue into this worker's own processing list
 * (QUEUE:processing:PROGRAM:WORKER) and removed from it only once done. A worker killed in
 * the middle of a job leaves the job in its processing list; the next life of the same worker
 * slot puts it back on the queue when it starts. So no job is lost, and a job may be done
 * twice (at-least-once): make jobs idempotent.
 */
final class Consumer
{
    private readonly \Redis $redis;
    private readonly string $queue;
    private readonly string $processing;
    private readonly string $done;
    private readonly int $jobMs;

    public function __construct()
    {
        $app = Container::instance();
        $config = $app->get('config');
        $this->redis = $app->get('redis');
        $this->queue = $config['queue'];
        $this->processing = sprintf(
            '%s:processing:%s:%s',
            $this->queue,
            getenv('GSUPER_PROGRAM') ?: 'cli',
            getenv('GSUPER_WORKER') ?: '0',
        );
        $this->done = $this->queue . ':done';
        $this->jobMs = $config['job_ms'];
        $this->recover();
    }

    /** Put back on the queue the jobs a previous life of this worker took and never finished. */
    private function recover(): void
    {
        $recovered = 0;
        while ($this->redis->rPopLPush($this->processing, $this->queue) !== false) {
            $recovered++;
        }
        if ($recovered > 0) {
            fwrite(STDERR, "recovered $recovered unfinished job(s) from {$this->processing}\n");
        }
    }

    /** One request: wait up to 1 s for a job, do it, record it, acknowledge it. */
    public function handle(): void
    {
        // An idle worker waits here, in Redis, rather than spinning; a stop waits at most 1 s.
        $job = $this->redis->brpoplpush($this->queue, $this->processing, 1);
        if (!is_string($job)) {
            return; // timed out: no job
        }

        $this->process($job);

        // Record and acknowledge together. A crash before this line leaves the job in the
        // processing list, to be done again by this worker's next life.
        $this->redis->multi()
            ->rPush($this->done, $job)
            ->lRem($this->processing, $job, 1)
            ->exec();
    }

    /** The "work": a payload "sleep:MS" takes MS milliseconds; any other takes JOB_MS. */
    private function process(string $job): void
    {
        $ms = str_starts_with($job, 'sleep:') ? (int) substr($job, 6) : $this->jobMs;
        if ($ms > 0) {
            usleep($ms * 1000);
        }
    }
}
