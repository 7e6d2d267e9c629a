<?php
/**
 * Test fixtures for runners/php/worker.php, loaded as a bootstrap file. Each fixture appends
 * a line to the file named by TEST_LOG, so a test can count what ran.
 */

declare(strict_types=1);

namespace Fixtures\Jobs;

function note(string $line): void
{
    file_put_contents((string) getenv('TEST_LOG'), $line . "\n", FILE_APPEND | LOCK_EX);
}

/** Non-static handler: gsuper constructs it once per worker life. */
final class Counter
{
    public function __construct()
    {
        note('construct');
    }

    public function handle(): void
    {
        note('handle');
    }
}

/** Static handler: constructing it would fail (required argument), so it must be called statically. */
final class StaticJob
{
    public function __construct(int $required)
    {
        note('construct');
    }

    public static function run(): void
    {
        note('static');
    }
}

function work(): void
{
    note('function');
}

/** Does nothing: for speed and CPU tests. */
final class Noop
{
    public function run(): void
    {
    }
}

function noop(): void
{
}

/** Keeps 4 MB more resident memory after every request (str_repeat writes every page). */
final class Leaker
{
    /** @var list<string> */
    private array $kept = [];

    public function handle(): void
    {
        $this->kept[] = str_repeat('x', 4 << 20);
        note('leak');
    }
}

/** One slow request: writes "start TIME", sleeps SLOW_S seconds, writes "end TIME". */
final class Slow
{
    public function handle(): void
    {
        note('start ' . microtime(true));
        sleep((int) (getenv('SLOW_S') ?: 2));
        note('end ' . microtime(true));
    }
}

/** Fails on odd requests, succeeds on even ones. */
final class Flaky
{
    private int $calls = 0;

    public function handle(): void
    {
        $this->calls++;
        if ($this->calls % 2 === 1) {
            throw new FlakyFailure("flaky failure {$this->calls}");
        }
        note('ok');
    }
}

final class FlakyFailure extends \RuntimeException
{
}

/** A constructor that throws: the worker cannot start. */
final class BrokenConstructor
{
    public function __construct()
    {
        throw new \RuntimeException('no connection to anything');
    }

    public function handle(): void
    {
    }
}

/** Business code that unblocks the stop signals itself (the runner keeps them blocked). */
final class Unblocker
{
    public function handle(): void
    {
        pcntl_sigprocmask(SIG_UNBLOCK, [SIGTERM]);
        usleep(20_000);
    }
}
