<?php

declare(strict_types=1);

namespace App\Jobs;

use App\Container;

/**
 * Takes jobs from a Redis list with the reliable-queue pattern (gsuper:
 * handler = App\Jobs\Consumer::handle). gsuper creates one instance per worker life and calls
 * handle() once per request.
 *
 * A job is moved atomically from the queue into this worker process's own processing list
 * (QUEUE:processing:PROGRAM:PID) and removed from it only once done. A worker killed in the
 * middle of a job leaves the job in its processing list. Any worker of the program puts such
 * jobs back on the queue when it starts, and whenever it is idle, once the process that owned the
 * list is gone. So no job is lost, and a job may be done twice after a kill (at-least-once):
 * make jobs idempotent.
 *
 * The list is keyed by pid, not by worker index: during a rolling restart the old and the new
 * worker of one slot share an index, and the new one must not take back a job the old one is
 * still doing.
 */
final class Consumer
{
    private readonly \Redis $redis;
    private readonly string $queue;
    private readonly string $prefix;
    private readonly string $processing;
    private readonly string $done;
    private readonly int $jobMs;
    private readonly int $leakKb;
    /** @var list<string> what LEAK_KB piles up, to show memory_limit at work */
    private array $leak = [];

    public function __construct()
    {
        $app = Container::instance();
        $config = $app->get('config');
        $this->redis = $app->get('redis');
        $this->queue = $config['queue'];
        $this->prefix = sprintf('%s:processing:%s:', $this->queue, getenv('GSUPER_PROGRAM') ?: 'cli');
        $this->processing = $this->prefix . getmypid();
        $this->done = $this->queue . ':done';
        $this->jobMs = $config['job_ms'];
        $this->leakKb = (int) (getenv('LEAK_KB') ?: 0);
        $this->recover();
    }

    /** Put back on the queue the jobs that workers no longer alive took and never finished. */
    private function recover(): void
    {
        $recovered = 0;
        $cursor = null;
        do {
            $keys = $this->redis->scan($cursor, $this->prefix . '*', 100);
            foreach ($keys ?: [] as $key) {
                $pid = (int) substr($key, strlen($this->prefix));
                if ($pid <= 0 || $pid === getmypid() || posix_kill($pid, 0) || posix_get_last_error() === 1 /* EPERM: alive */) {
                    continue;
                }
                while ($this->redis->rPopLPush($key, $this->queue) !== false) {
                    $recovered++;
                }
            }
        } while ($cursor);
        if ($recovered > 0) {
            fwrite(STDERR, "recovered $recovered unfinished job(s) of workers that died\n");
        }
    }

    /** One request: wait up to 1 s for a job, do it, record it, acknowledge it. */
    public function handle(): void
    {
        // An idle worker waits here, in Redis, rather than spinning; a stop waits at most 1 s.
        $job = $this->redis->brpoplpush($this->queue, $this->processing, 1);
        if (!is_string($job)) {
            $this->recover(); // idle: a good moment to pick up what dead workers left
            return;
        }

        $this->process($job);

        // Record and acknowledge together. A crash before this line leaves the job in the
        // processing list, to be done again once this process is gone.
        $this->redis->multi()
            ->rPush($this->done, $job)
            ->lRem($this->processing, $job, 1)
            ->exec();
    }

    /**
     * The "work": a payload "sleep:MS" takes MS milliseconds; "hang-once:ID" hangs (an hour) on
     * its first attempt, as a job stuck on a dead socket would, and takes JOB_MS on the next
     * (gsuper's request_timeout ends the hung worker; the job is recovered and done again);
     * any other takes JOB_MS.
     */
    private function process(string $job): void
    {
        if (str_starts_with($job, 'hang-once:') && $this->redis->setnx($this->queue . ':attempted:' . $job, '1')) {
            sleep(3600);
        }
        $ms = str_starts_with($job, 'sleep:') ? (int) substr($job, 6) : $this->jobMs;
        if ($ms > 0) {
            usleep($ms * 1000);
        }
        if ($this->leakKb > 0) {
            $this->leak[] = str_repeat('x', $this->leakKb * 1024);
        }
    }
}
