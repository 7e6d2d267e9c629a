<?php

namespace App\Jobs;

use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Queue\InteractsWithQueue;

/**
 * A job of the example: writes DONE_DIR/<id> when it ran (with the pid and attempt), and, the
 * first time a worker process runs a job, STAMP_DIR/<pid> with hrtime(true) (bench/warm.py).
 * With $failTimes > 0 it throws on its first attempts, so Laravel's retries are visible.
 */
class Stamp implements ShouldQueue
{
    use InteractsWithQueue, Queueable;

    public $tries = 3;

    private static bool $first = true;

    public function __construct(public string $id = '', public int $failTimes = 0)
    {
    }

    public function handle(): void
    {
        if (self::$first) {
            self::$first = false;
            if ($dir = getenv('STAMP_DIR')) {
                file_put_contents("$dir/" . getmypid(), (string) hrtime(true));
            }
        }
        if ($this->attempts() <= $this->failTimes) {
            throw new \RuntimeException("job {$this->id} fails on attempt {$this->attempts()}");
        }
        if (($dir = getenv('DONE_DIR')) && $this->id !== '') {
            file_put_contents("$dir/{$this->id}", getmypid() . ' ' . $this->attempts());
        }
    }
}
