<?php
/**
 * gsuper PHP runner: the in-process request loop of one worker.
 *
 * The master starts `php runners/php/worker.php` in the program's directory and passes
 * everything in the environment:
 *
 *   GSUPER_PROGRAM, GSUPER_WORKER   program name, worker index (process title, logs)
 *   GSUPER_STATUS_FD                fd of a pipe to the master (JSON lines); empty: no reports
 *   GSUPER_MODE                     loop (default): one call per request | daemon: one long call
 *   GSUPER_SCRIPT | GSUPER_HANDLER  the business code: a file, or Class::method / function
 *   GSUPER_BOOTSTRAP                newline-separated files, require_once'd once, in order
 *   GSUPER_MAX_REQUEST              requests per life, 0 = unlimited
 *   GSUPER_MEMORY_LIMIT             bytes of resident memory (VmRSS), 0 = none
 *   GSUPER_USLEEP                   microseconds slept after each request, 0 = none
 *   GSUPER_ON_ERROR                 continue (default) | exit (code 70) after a failed request
 *   GSUPER_BUSY_FD                  the busy page: "busy since" stamp at the start of a request
 *                                   (batch), 0 when idle; the master enforces request_timeout
 *   GSUPER_DEADLINE_NS              hrtime (CLOCK_MONOTONIC) after which the worker ends its
 *                                   life between requests (max_lifetime); 0 = none
 *
 * Exit codes: 0 a clean end (max_request, memory_limit, stopped, done); 70 a failed request
 * with on_error=exit; 78 the worker could not start (bad bootstrap, handler or settings);
 * 255 a PHP fatal error. Status events: ready, request, error, exit (see docs/runners.md).
 */

declare(strict_types=1);

namespace Gsuper\Runner;

if (!\extension_loaded('pcntl')) {
    fwrite(\STDERR, "gsuper: cannot start: the PHP runner needs the pcntl extension (php-cli with pcntl)\n");
    exit(78);
}

const EXIT_OK = 0;
const EXIT_REQUEST_FAILED = 70;   // EX_SOFTWARE
const EXIT_CANNOT_START = 78;     // EX_CONFIG
const STOP_SIGNALS = [\SIGTERM, \SIGINT, \SIGQUIT];

/** Request reports go out at most this often (plus always the last one). */
const REPORT_EVERY_NS = 50_000_000;

/**
 * With usleep=0, stop signals and memory are checked after a batch of requests that lasts
 * about this long (at the pace measured so far), instead of after every request: a check
 * costs a syscall (~0.3 µs), many times a tiny request. Requests longer than this are checked
 * one by one, so batching only ever delays a stop by about this much work. (Should tiny
 * requests suddenly turn slow, a batch still runs to its end: at most MAX_BATCH requests.)
 */
const CHECK_EVERY_NS = 20_000;
const MAX_BATCH = 1024;

/** Keeps one status line under PIPE_BUF, so a non-blocking write is all or nothing. */
const MAX_MESSAGE_BYTES = 500;

/** Raised for anything that keeps the worker from starting: it ends with exit code 78. */
final class CannotStart extends \RuntimeException
{
}

/**
 * Run a business script in a fresh function scope, so that its variables die with the
 * request. No named variable of ours is visible to it (the path is only an argument).
 */
function include_script(): void
{
    include func_get_arg(0);
}

/** The status pipe to the master: one JSON object per line, never blocking a request. */
final class StatusPipe
{
    /** @var resource|null */
    private $stream = null;

    public function __construct(string $fd, private readonly Worker $worker)
    {
        if ($fd === '') {
            return;
        }
        if (!ctype_digit($fd)) {
            throw new CannotStart("GSUPER_STATUS_FD must be a file descriptor number, not '$fd'");
        }
        $stream = @fopen("php://fd/$fd", 'w');
        if ($stream === false) {
            // Not fatal: the worker can run without reports; the master still sees it exit.
            $worker->log("cannot open status fd $fd; running without status reports");
            return;
        }
        stream_set_blocking($stream, false);
        $this->stream = $stream;
    }

    /**
     * Send one event. A write that would block is dropped: a report is never worth a stall.
     * $last: the final reports before exit may wait a moment (100 ms) for room in the pipe.
     */
    public function send(array $event, bool $last = false): void
    {
        if ($this->stream === null) {
            return;
        }
        $line = json_encode(
            $event,
            \JSON_UNESCAPED_SLASHES | \JSON_UNESCAPED_UNICODE | \JSON_INVALID_UTF8_SUBSTITUTE
            | \JSON_PRESERVE_ZERO_FRACTION
        ) . "\n";
        // Lines are shorter than PIPE_BUF (4096), so a write is atomic: all of it or EAGAIN.
        $written = @fwrite($this->stream, $line);
        if ($written === 0 && $last) {
            $read = $except = null;
            $write = [$this->stream];
            if (@stream_select($read, $write, $except, 0, 100_000) > 0) {
                $written = @fwrite($this->stream, $line);
            }
        }
        if ($written === false) {
            // The master is gone or the fd is bad (EPIPE/EBADF; PHP's CLI ignores SIGPIPE).
            $this->stream = null;
        }
    }
}

/**
 * The busy page (docs/runners.md): the master reads from it when the current request began.
 * Mapped with FFI where PHP has it (a store costs ~30 ns); else written with fseek + fwrite
 * (~1 µs). Either way once per batch of requests, not per tiny request.
 */
final class BusyPage
{
    private ?\FFI\CData $slots = null;
    /** @var resource|null */
    private $stream = null;

    public function __construct(string $fd, Worker $worker)
    {
        if ($fd === '') {
            return;
        }
        if (!ctype_digit($fd)) {
            throw new CannotStart("GSUPER_BUSY_FD must be a file descriptor number, not '$fd'");
        }
        if (\extension_loaded('ffi')) {
            try {
                $libc = self::libc();
                $map = $libc->mmap(null, 16, 3 /* PROT_READ | PROT_WRITE */, 1 /* MAP_SHARED */, (int) $fd, 0);
                if (\FFI::cast('intptr_t', $map)->cdata !== -1) { // MAP_FAILED
                    $this->slots = \FFI::cast('int64_t *', $map);
                    $libc->close((int) $fd); // the mapping stays; the business code's children do not get it
                    return;
                }
            } catch (\Throwable) {
                // FFI disabled (ffi.enable) or libc not found by that name: write instead.
            }
        }
        $stream = @fopen("php://fd/$fd", 'r+');
        if ($stream === false) {
            $worker->log("cannot open busy page fd $fd; request_timeout cannot be enforced");
            return;
        }
        $this->stream = $stream;
    }

    /** libc's mmap and close, declared once per process (a spare declares it before its go). */
    public static function libc(): \FFI
    {
        return self::$libc ??= \FFI::cdef('void *mmap(void *, size_t, int, int, int, long); int close(int);', 'libc.so.6');
    }

    private static ?\FFI $libc = null;

    public function usable(): bool
    {
        return $this->slots !== null || $this->stream !== null;
    }

    /** A request (or a batch of tiny ones, from request $request) begins now. */
    public function begin(int $request): void
    {
        if ($this->slots !== null) {
            $this->slots[1] = $request;
            $this->slots[0] = hrtime(true);
        } elseif ($this->stream !== null) {
            fseek($this->stream, 0);
            fwrite($this->stream, pack('qq', hrtime(true), $request));
        }
    }

    public function idle(): void
    {
        if ($this->slots !== null) {
            $this->slots[0] = 0;
        } elseif ($this->stream !== null) {
            fseek($this->stream, 0);
            fwrite($this->stream, pack('q', 0));
        }
    }
}

final class Worker
{
    public readonly string $name;
    public readonly string $mode;
    public readonly string $script;
    public readonly string $handler;
    /** @var list<string> */
    public readonly array $bootstrap;
    public readonly int $maxRequest;
    public readonly int $memoryLimit;
    public readonly int $usleep;
    public readonly bool $exitOnError;
    public readonly int $deadlineNs;

    private StatusPipe $status;
    private BusyPage $busy;
    /** startup (bootstrap, resolving the handler) | loop | daemon | done */
    private string $phase = 'startup';
    /** Set by our signal handler: only runs if business code unblocked the stop signals. */
    private bool $stopRequested = false;
    /** Requests done so far, as of the last check (the shutdown function reads it). */
    private int $requests = 0;
    private int $reportedRequests = 0;
    private int $lastReportNs = 0;
    /** Time spent in requests since the last request report (for its "ms"). */
    private int $busyNs = 0;
    private int $rss = 0;
    /** @var resource|null kept open: rewinding and re-reading is 2x cheaper than reopening */
    private $procStatus = null;

    /** @param array<string, string> $env */
    public function __construct(array $env)
    {
        $this->name = (($env['GSUPER_PROGRAM'] ?? '') ?: 'php') . '#' . (($env['GSUPER_WORKER'] ?? '') ?: '0');
        $this->status = new StatusPipe($env['GSUPER_STATUS_FD'] ?? '', $this);
        $this->busy = new BusyPage(trim($env['GSUPER_BUSY_FD'] ?? ''), $this);
    }

    /**
     * Read the settings. Apart from the constructor, so that a bad one is reported on the
     * status pipe like any failure to start.
     *
     * @param array<string, string> $env
     */
    public function configure(array $env): void
    {
        $this->mode = ($env['GSUPER_MODE'] ?? '') ?: 'loop';
        if ($this->mode !== 'loop' && $this->mode !== 'daemon') {
            throw new CannotStart("GSUPER_MODE must be loop or daemon, not '{$this->mode}'");
        }
        $this->script = $env['GSUPER_SCRIPT'] ?? '';
        $this->handler = trim($env['GSUPER_HANDLER'] ?? '');
        if (($this->script === '') === ($this->handler === '')) {
            throw new CannotStart('exactly one of GSUPER_SCRIPT and GSUPER_HANDLER must be set');
        }
        $this->bootstrap = array_values(array_filter(
            array_map('trim', explode("\n", $env['GSUPER_BOOTSTRAP'] ?? '')),
            static fn (string $file): bool => $file !== '',
        ));
        $this->maxRequest = self::count($env, 'GSUPER_MAX_REQUEST');
        $this->memoryLimit = self::count($env, 'GSUPER_MEMORY_LIMIT');
        $this->usleep = self::count($env, 'GSUPER_USLEEP');
        $this->deadlineNs = self::count($env, 'GSUPER_DEADLINE_NS');
        $onError = ($env['GSUPER_ON_ERROR'] ?? '') ?: 'continue';
        if ($onError !== 'continue' && $onError !== 'exit') {
            throw new CannotStart("GSUPER_ON_ERROR must be continue or exit, not '$onError'");
        }
        $this->exitOnError = $onError === 'exit';
    }

    /** @param array<string, string> $env */
    private static function count(array $env, string $key): int
    {
        $value = trim($env[$key] ?? '');
        if ($value === '') {
            return 0;
        }
        if (!ctype_digit($value)) {
            throw new CannotStart("$key must be a whole number, not '$value'");
        }
        return (int) $value;
    }

    /** Process title, shutdown hook, and stop signals for the startup phase. */
    public function start(): void
    {
        @cli_set_process_title('gsuper: ' . $this->name);
        register_shutdown_function([$this, 'onShutdown']);
        // During startup a stop ends the worker at once: no request is in progress to finish.
        // (Async signals also interrupt a sleep or a connect in a bootstrap file.)
        pcntl_async_signals(true);
        foreach (STOP_SIGNALS as $signal) {
            pcntl_signal($signal, function (): void {
                $this->stopRequested = true;
                if ($this->phase === 'startup') {
                    $this->finish('stopped', EXIT_OK);
                }
            });
        }
    }

    /** The business code, resolved once, and the loop (or the single daemon call). */
    public function run(): never
    {
        [$batch, $target] = $this->resolve();
        if ($this->mode === 'daemon') {
            $this->runDaemon($batch, $target);
        }
        $this->runLoop($batch, $target);
    }

    /**
     * Returns [batch, target]: batch($target, $n, $upTo, &$error) runs requests $n+1..$upTo
     * and returns the count reached; a request that throws ends the batch early, counted,
     * with the Throwable in $error.
     *
     * The batch loop is compiled once with the handler's name written in it (after the name
     * is checked by reflection): a direct call such as `\App\Job::run()` costs half of a call
     * through a Closure, which matters for tiny requests.
     *
     * @return array{\Closure, mixed}
     */
    private function resolve(): array
    {
        $target = null;
        if ($this->script !== '') {
            if (!is_file($this->script) || !is_readable($this->script)) {
                throw new CannotStart("script not found or not readable: {$this->script}");
            }
            $call = '\\' . __NAMESPACE__ . '\\include_script($target)';
            $target = $this->script;
        } elseif (str_contains($this->handler, '::')) {
            [$class, $method] = explode('::', ltrim($this->handler, '\\'), 2);
            if (!class_exists($class)) {
                throw new CannotStart("handler class $class not found"
                    . ' (is it loaded by a bootstrap file, e.g. an autoloader?)');
            }
            if (!method_exists($class, $method)) {
                throw new CannotStart("handler method {$this->handler} does not exist");
            }
            $reflection = new \ReflectionMethod($class, $method);
            if (!$reflection->isPublic() || $reflection->getNumberOfRequiredParameters() > 0) {
                throw new CannotStart("handler {$this->handler} must be public and take no arguments");
            }
            $method = $reflection->getName();
            if ($reflection->isStatic()) {
                // The class as named (not the declaring parent): static:: must resolve to it.
                $call = '\\' . (new \ReflectionClass($class))->getName() . "::$method()";
            } else {
                // One instance per worker life; its constructor may open connections.
                try {
                    $target = new $class();
                } catch (\Throwable $e) {
                    throw new CannotStart("constructing handler class $class failed: " . self::describe($e), 0, $e);
                }
                $call = "\$target->$method()";
            }
        } else {
            $function = ltrim($this->handler, '\\');
            if (!function_exists($function)) {
                throw new CannotStart("handler function {$this->handler} not found"
                    . ' (is it loaded by a bootstrap file?)');
            }
            $reflection = new \ReflectionFunction($function);
            if ($reflection->getNumberOfRequiredParameters() > 0) {
                throw new CannotStart("handler {$this->handler} must take no arguments");
            }
            $call = '\\' . $reflection->getName() . '()';
        }
        $batch = eval('return static function ($target, int $n, int $upTo, &$error): int {
            try {
                for (; $n < $upTo; ++$n) {
                    ' . $call . ';
                }
            } catch (\Throwable $e) {
                $error = $e;
                ++$n;
            }
            return $n;
        };');
        return [$batch, $target];
    }

    private function runDaemon(\Closure $batch, mixed $target): never
    {
        // A long run handles its own signals (or dies of TERM by default, as any program).
        foreach (STOP_SIGNALS as $signal) {
            pcntl_signal($signal, \SIG_DFL);
        }
        $this->phase = 'daemon';
        $this->status->send(['event' => 'ready', 'pid' => getmypid()]);
        $error = null;
        $started = hrtime(true);
        $this->requests = $batch($target, 0, 1, $error);
        $this->busyNs = hrtime(true) - $started;
        if ($error !== null) {
            $this->requestFailed($error);
            $this->finish('error', EXIT_REQUEST_FAILED);
        }
        $this->finish('done', EXIT_OK);
    }

    private function runLoop(\Closure $batch, mixed $target): never
    {
        // Stop signals stay blocked from here on: a request is never interrupted by them (no
        // EINTR in its sleep() or blocking reads), and they wait, pending, until the loop
        // takes them with sigtimedwait between requests. One sigprocmask for the whole life
        // instead of two per request (each costs more than a tiny request).
        pcntl_sigprocmask(\SIG_BLOCK, STOP_SIGNALS);
        pcntl_signal_dispatch(); // a stop caught just before the block ends startup cleanly
        $this->phase = 'loop';
        $this->status->send(['event' => 'ready', 'pid' => getmypid()]);

        $n = 0;
        $size = 1; // requests per batch: 1 unless requests are much shorter than CHECK_EVERY_NS
        $upToMax = $this->maxRequest > 0 ? $this->maxRequest : \PHP_INT_MAX;
        $sleepS = intdiv($this->usleep, 1_000_000);
        $sleepNs = ($this->usleep % 1_000_000) * 1000;
        $busy = $this->busy->usable() ? $this->busy : null;
        $started = hrtime(true);
        while (true) {
            $error = null;
            $before = $n;
            $busy?->begin($n + 1);
            $n = $batch($target, $n, min($n + $size, $upToMax), $error);
            $now = hrtime(true);
            $this->requests = $n;
            $this->busyNs += $now - $started;
            if ($error !== null) {
                $this->requestFailed($error);
                if ($this->exitOnError) {
                    $this->finish('error', EXIT_REQUEST_FAILED);
                }
            }
            if ($this->usleep === 0) {
                // Grow the batch (at most doubling) while requests are tiny; shrink at once.
                $perRequest = intdiv($now - $started, $n - $before) ?: 1;
                $size = max(1, min(intdiv(CHECK_EVERY_NS, $perRequest), 2 * $size, MAX_BATCH));
            }
            if ($this->memoryLimit > 0) {
                $this->rss = $this->readRss();
            }
            if ($now - $this->lastReportNs >= REPORT_EVERY_NS) {
                $this->reportRequests($now);
            }
            if ($n >= $upToMax) {
                $this->finish('max_request', EXIT_OK);
            }
            if ($this->memoryLimit > 0 && $this->rss > $this->memoryLimit) {
                $this->finish('memory_limit', EXIT_OK);
            }
            if ($this->deadlineNs > 0 && $now >= $this->deadlineNs) {
                $this->finish('max_lifetime', EXIT_OK);
            }
            if ($this->usleep > 0) {
                $busy?->idle(); // with usleep = 0 the next batch's stamp follows at once
            }
            // The usleep and the stop check are one call: wait for a stop signal, at most
            // usleep (0: just look). An idle worker thus stops at once, not after its sleep.
            if (pcntl_sigtimedwait(STOP_SIGNALS, $info, $sleepS, $sleepNs) > 0 || $this->stopRequested) {
                $this->finish('stopped', EXIT_OK);
            }
            $started = hrtime(true);
        }
    }

    private function reportRequests(int $now, bool $last = false): void
    {
        $done = $this->requests - $this->reportedRequests;
        if ($done <= 0) {
            return;
        }
        if ($this->memoryLimit === 0) {
            $this->rss = $this->readRss(); // else it was read after the last request
        }
        $this->status->send([
            'event' => 'request',
            'requests' => $this->requests,
            'memory' => $this->rss,
            // mean of the requests since the last report (one request when they are slow)
            'ms' => round($this->busyNs / $done / 1e6, 6),
        ], $last);
        $this->reportedRequests = $this->requests;
        $this->busyNs = 0;
        $this->lastReportNs = $now;
    }

    /** Resident memory in bytes: VmRSS of /proc/self/status, as ps shows it. */
    private function readRss(): int
    {
        $this->procStatus ??= @fopen('/proc/self/status', 'r') ?: null;
        if ($this->procStatus === null) {
            return 0;
        }
        rewind($this->procStatus);
        $text = (string) fread($this->procStatus, 8192);
        $at = strpos($text, 'VmRSS:');
        return $at === false ? 0 : (int) trim(substr($text, $at + 6, 24)) * 1024;
    }

    private function requestFailed(\Throwable $e): void
    {
        $this->log("request {$this->requests} failed: $e");
        $this->status->send([
            'event' => 'error',
            'requests' => $this->requests,
            'message' => substr(get_class($e) . ': ' . $e->getMessage(), 0, MAX_MESSAGE_BYTES),
        ]);
    }

    /** Report the end (with a last request report; $message says why, if it is a failure) and exit. */
    public function finish(string $reason, int $code, string $message = ''): never
    {
        $this->phase = 'done';
        $this->busy->idle(); // no request runs any more: the last reports may wait for the pipe
        if ($this->requests > $this->reportedRequests) {
            $this->reportRequests(hrtime(true), true);
        }
        $this->reportExit($reason, $message);
        exit($code);
    }

    private function reportExit(string $reason, string $message): void
    {
        $event = ['event' => 'exit', 'reason' => $reason, 'requests' => $this->requests];
        if ($message !== '') {
            $event['message'] = substr($message, 0, MAX_MESSAGE_BYTES);
        }
        $this->status->send($event, true);
    }

    /** One clear line (plus the trace of an exception that caused it), then exit 78. */
    public function cannotStart(string $message, ?\Throwable $e = null): never
    {
        $this->log('cannot start: ' . $message);
        $cause = $e instanceof CannotStart ? $e->getPrevious() : $e;
        if ($cause !== null) {
            $this->log("stack trace:\n" . $cause->getTraceAsString());
        }
        $this->finish('bootstrap', EXIT_CANNOT_START, $message);
    }

    /**
     * Runs at every exit. finish() has already reported a planned one; anything else is the
     * business code calling exit() (reason done) or a PHP fatal error (reason error).
     */
    public function onShutdown(): void
    {
        if ($this->phase === 'done') {
            return;
        }
        $error = error_get_last();
        $fatal = $error !== null && ($error['type'] & (\E_ERROR | \E_PARSE | \E_CORE_ERROR
            | \E_COMPILE_ERROR | \E_USER_ERROR | \E_RECOVERABLE_ERROR)) !== 0;
        $where = $fatal ? "{$error['message']} in {$error['file']}:{$error['line']}" : '';
        $phase = $this->phase;
        if ($phase === 'loop' || $phase === 'daemon') {
            // The request that was running counts (in a batch of tiny requests this is the
            // count at the start of the batch plus one: a lower bound).
            $this->requests++;
        }
        $this->phase = 'done';
        if ($phase === 'startup') {
            $message = $fatal ? "fatal error: $where" : 'exit() during bootstrap';
            $this->log("cannot start: $message");
            $this->reportExit('bootstrap', $message);
            exit(EXIT_CANNOT_START); // (exit() in a shutdown function sets the exit code)
        }
        if ($fatal) {
            $this->log("request {$this->requests} died of a fatal error: $where");
        }
        $this->reportExit($fatal ? 'error' : 'done', $fatal ? "fatal error: $where" : '');
    }

    /**
     * A template's copy after a fork: its shutdown function must not report for the child, and
     * its status stream (the template's socket) is closed.
     */
    public function retire(): void
    {
        $this->phase = 'done';
        $this->status = new StatusPipe('', $this);
    }

    public function log(string $message): void
    {
        @fwrite(\STDERR, "gsuper {$this->name}: $message\n");
    }

    public static function describe(\Throwable $e): string
    {
        return get_class($e) . ': ' . $e->getMessage() . ' in ' . $e->getFile() . ':' . $e->getLine();
    }
}

/**
 * Template mode (`warm = true`): this process has loaded the bootstrap once, serves no request,
 * and forks spare workers whenever the master asks (docs/architecture.md, "Warm workers").
 *
 * The master talks to it over a SOCK_SEQPACKET socket (GSUPER_TEMPLATE_FD), one packet per
 * message. A request is {"spare": true, "id": N} carrying one end of a fresh socketpair (SCM_RIGHTS):
 * the spare's own line to the master. The template forks an intermediate child, which forks
 * the spare, reports {"event": "forked", "id": N, "pid": P}, waits for the master's one-byte
 * acknowledgement (the master now watches P) and exits: the spare is orphaned to the master, a
 * subreaper, which reaps it and gets its true exit status. The spare waits, idle, for its "go"
 * (Template::spare); only then does it become a worker (Template::worker). libc's dup, dup2,
 * prctl and _exit come through FFI.
 */
final class Template
{
    private \Socket $socket;
    /** @var resource the stream the socket was imported from (its own descriptor) */
    private $stream;
    private \FFI $libc;
    private int $masterPid;
    /** The socket's descriptor as inherited (php://fd opened a duplicate of it). */
    private int $fd;

    private function __construct(private readonly Worker $template, string $fd)
    {
        if (!ctype_digit($fd)) {
            throw new CannotStart("GSUPER_TEMPLATE_FD must be a file descriptor number, not '$fd'");
        }
        if (!\extension_loaded('sockets') || !\extension_loaded('posix')) {
            throw new CannotStart('warm workers need the PHP sockets and posix extensions');
        }
        if (!\extension_loaded('ffi')) {
            throw new CannotStart('warm workers need the PHP FFI extension (for dup2 and prctl)');
        }
        try {
            $this->libc = \FFI::cdef(
                'int dup(int); int dup2(int, int); int close(int);'
                . ' int prctl(int, unsigned long, unsigned long, unsigned long, unsigned long); void _exit(int);',
                'libc.so.6',
            );
        } catch (\Throwable $e) {
            throw new CannotStart('warm workers need PHP FFI (ffi.enable): ' . $e->getMessage());
        }
        $stream = @fopen("php://fd/$fd", 'r+');
        $socket = $stream === false ? false : @socket_import_stream($stream);
        if ($socket === false) {
            throw new CannotStart("cannot open the template socket fd $fd");
        }
        // The status pipe of the template is this same socket, opened non-blocking: serve blocks.
        socket_set_block($socket);
        $this->socket = $socket;
        $this->stream = $stream;
        $this->masterPid = posix_getppid();
        $this->fd = (int) $fd;
    }

    /**
     * Serve spare requests until the master closes the socket (then exit 0) or stops us.
     * Returns only in a forked worker: a fresh Worker, configured from the worker's own settings.
     */
    public static function serve(Worker $template, string $fd): Worker
    {
        try {
            $server = new self($template, $fd);
        } catch (CannotStart $e) {
            $template->cannotStart($e->getMessage());
        }
        gc_collect_cycles(); // what the bootstrap left for the collector is not copied into every worker
        $server->send(['event' => 'ready', 'pid' => getmypid(), 'template' => true]);
        while (true) {
            $message = ['buffer_size' => 4096, 'controllen' => socket_cmsg_space(\SOL_SOCKET, \SCM_RIGHTS, 1)];
            $got = @socket_recvmsg($server->socket, $message, 0);
            if ($got === false && socket_last_error($server->socket) === \SOCKET_EINTR) {
                continue;
            }
            if (!$got) { // 0: the master closed its end; false: the socket is gone
                $template->finish('stopped', EXIT_OK);
            }
            $request = json_decode(trim((string) ($message['iov'][0] ?? '')), true);
            $line = $message['control'][0]['data'][0] ?? null; // a socket arrives as a \Socket
            unset($message);
            if (!\is_array($request) || empty($request['spare']) || !$line instanceof \Socket) {
                $template->log('ignored a malformed spare request');
                unset($line);
                continue;
            }
            $pid = pcntl_fork();
            if ($pid === 0) {
                return $server->intermediate($line, $request['id'] ?? null);
            }
            unset($line); // closes our copy of the spare's socket
            if ($pid < 0) {
                $server->send(['event' => 'fork_failed', 'id' => $request['id'] ?? null, 'message' => 'fork: ' . pcntl_strerror(pcntl_get_last_error())]);
                continue;
            }
            while (pcntl_waitpid($pid, $status) === -1 && pcntl_get_last_error() === \PCNTL_EINTR) {
            }
        }
    }

    /** One packet to the master. */
    private function send(array $event): void
    {
        $line = json_encode($event, \JSON_UNESCAPED_SLASHES) . "\n";
        @socket_send($this->socket, $line, \strlen($line), 0);
    }

    /**
     * The descriptors of this process by the file they refer to, "device:inode" (pipes and
     * memfds alike): socket_recvmsg does not say which numbers it installed, the master sends
     * each file's device and inode. The inode alone is not enough: pipes and sockets take their
     * numbers from one counter of the kernel, memfds from another, /dev/null and files from
     * their file systems, so a memfd and a socket can share one (CI saw a busy page taken for
     * another descriptor, and a hung request never ended).
     *
     * @return array<string, int> "device:inode" => descriptor
     */
    private static function fdsByInode(): array
    {
        $fds = [];
        foreach (scandir('/proc/self/fd') ?: [] as $entry) {
            if (ctype_digit($entry)) {
                $stat = @stat("/proc/self/fd/$entry");
                if ($stat !== false) {
                    $fds[$stat['dev'] . ':' . $stat['ino']] = (int) $entry;
                }
            }
        }
        return $fds;
    }

    /**
     * In the intermediate child: fork the spare, report its pid, wait for the master's
     * acknowledgement, then vanish (_exit: no shutdown function, no destructor runs here).
     */
    private function intermediate(\Socket $line, mixed $id): Worker
    {
        $this->template->retire();
        $pid = pcntl_fork();
        if ($pid === 0) {
            return $this->spare($line);
        }
        if ($pid < 0) {
            $this->send(['event' => 'fork_failed', 'id' => $id, 'message' => 'fork of the worker failed']);
            $this->libc->_exit(1);
        }
        $this->send(['event' => 'forked', 'id' => $id, 'pid' => $pid]);
        @socket_recv($this->socket, $ack, 16, 0);
        $this->libc->_exit(0);
        exit(0); // not reached
    }

    /**
     * In the spare: its own session and parent-death signal at once, then wait, idle, on its
     * own socket for the master's "go" (a slot to serve), and become that worker. A closed
     * socket (the template's program stopped, reloaded or renewed; the master died) ends it.
     */
    private function spare(\Socket $line): Worker
    {
        posix_setsid();
        socket_close($this->socket); // (closes the stream it was imported from too)
        $this->libc->close($this->fd);
        // The parent-death signal fires at the death of whoever is the parent then: first the
        // intermediate, which exits as soon as the master watches us, later the master. Waiting
        // for the intermediate's exit before setting it would cost that exit (a few ms for a big
        // heap); so the signal is SIGUSR2, and its handler tells the two deaths apart by the
        // parent pid (the kernel reparents before it signals). When the master died, a TERM to
        // ourselves drains the worker (or ends the spare), as PDEATHSIG=TERM would.
        $master = $this->masterPid;
        $intermediate = posix_getppid();
        pcntl_signal(\SIGUSR2, static function () use ($master): void {
            if (posix_getppid() !== $master) {
                posix_kill(getmypid(), \SIGTERM);
            }
        });
        foreach (STOP_SIGNALS as $signal) {
            pcntl_signal($signal, \SIG_DFL); // an idle spare just ends
        }
        $this->libc->prctl(1 /* PR_SET_PDEATHSIG */, \SIGUSR2, 0, 0, 0);
        $parent = posix_getppid();
        if ($parent !== $intermediate && $parent !== $master) { // the master died before we could watch it
            $this->libc->_exit(0);
        }
        @cli_set_process_title('gsuper: ' . (getenv('GSUPER_PROGRAM') ?: 'php') . '#spare');
        socket_set_block($line);
        // What the go needs first, done once now, while idle: the first scan of /proc/self/fd
        // and the FFI declaration cost ~0.3 ms each in a fresh fork (code paths and pages
        // touched for the first time), then a few µs.
        self::fdsByInode();
        try {
            BusyPage::libc();
        } catch (\Throwable) {
            // FFI disabled: BusyPage writes instead.
        }
        while (true) {
            $message = ['buffer_size' => 65536, 'controllen' => socket_cmsg_space(\SOL_SOCKET, \SCM_RIGHTS, 4)];
            $got = @socket_recvmsg($line, $message, 0);
            if ($got === false && socket_last_error($line) === \SOCKET_EINTR) {
                continue;
            }
            if (!$got) {
                $this->libc->_exit(0);
            }
            break;
        }
        socket_close($line);
        // A spare forked on demand (none was waiting) can get its go before the intermediate
        // has exited. Its SIGUSR2 would then land in the first request and cut a sleep() or a
        // blocking read short (EINTR). Wait for the reparenting (the intermediate's exit, a few
        // ms for a big heap; at most 1 s) and take the signal here, between requests.
        if (posix_getppid() === $intermediate) {
            $until = hrtime(true) + 1_000_000_000;
            while (posix_getppid() === $intermediate && hrtime(true) < $until) {
                usleep(200);
            }
            usleep(100); // the signal is sent with the reparenting: let it arrive
        }
        pcntl_signal_dispatch();
        $go = json_decode(trim((string) ($message['iov'][0] ?? '')), true);
        $received = $message['control'][0]['data'] ?? [];
        unset($message);
        return $this->worker(\is_array($go) ? $go : [], $received);
    }

    /**
     * In the spare, at its go: its own stdout, stderr, status pipe and busy page, its own
     * settings, fresh random seeds, and a fresh runner state.
     *
     * @param array<string, mixed> $go {"worker", "max_request", "ino": {name: "device:inode"}, "env", "directory"}
     * @param array<mixed> $received the streams holding the received descriptors open
     */
    private function worker(array $go, array $received): Worker
    {
        $byInode = self::fdsByInode();
        $fds = [];
        foreach ((array) ($go['ino'] ?? []) as $name => $inode) {
            $fds[$name] = $byInode[(string) $inode] ?? null;
        }
        if (!isset($fds['output'], $fds['status'])) {
            @fwrite(\STDERR, "gsuper: a spare got a malformed go; it exits\n");
            $this->libc->_exit(EXIT_CANNOT_START);
        }
        $this->libc->dup2($fds['output'], 1);
        $this->libc->dup2($fds['errors'] ?? $fds['output'], 2);
        if (isset($fds['busy'])) {
            // BusyPage closes the number it maps with libc; a number of its own, so that no
            // received stream is left holding a closed (later reused) descriptor.
            putenv('GSUPER_BUSY_FD=' . $this->libc->dup($fds['busy']));
        } elseif (isset($go['ino']['busy'])) {
            putenv('GSUPER_BUSY_FD');
            @fwrite(\STDERR, "gsuper: the busy page sent with the go was not found; request_timeout cannot be enforced\n");
        }
        // Of the received streams only the status pipe's stays open (for the worker's life): the
        // output and stderr pipes are on 1 and 2 now, the busy page has its own number; closed,
        // they are not inherited by what the business code starts.
        $statusIno = (string) ($go['ino']['status'] ?? '');
        foreach ($received as $stream) {
            $stat = \is_resource($stream) ? fstat($stream) : false;
            if ($stat !== false && $stat['dev'] . ':' . $stat['ino'] === $statusIno) {
                self::$keep[] = $stream;
            }
        }
        unset($received, $stream);
        // Random sequences must differ per worker: the template's seeds were copied by fork.
        mt_srand();
        srand();
        // This worker's own environment: what differs from the template's (expansions of
        // %(process_num) in `environment`, GSUPER_WORKER, its limits), set before after_fork.
        putenv('GSUPER_TEMPLATE_FD');
        foreach ((array) ($go['env'] ?? []) as $key => $value) {
            putenv($value === null ? (string) $key : "$key=$value");
        }
        putenv('GSUPER_STATUS_FD=' . $fds['status']);
        $directory = (string) ($go['directory'] ?? '');
        if ($directory !== '' && $directory !== getcwd()) {
            @chdir($directory);
        }
        $env = getenv();
        $worker = new Worker($env);
        try {
            $worker->configure($env);
        } catch (CannotStart $e) {
            $worker->cannotStart($e->getMessage());
        }
        $worker->start();
        return $worker;
    }

    /** @var array<mixed> streams a forked worker keeps open (its status pipe) */
    private static array $keep = [];
}

// ---------------------------------------------------------------------------------------------
// Main. Bootstrap files are loaded here, at the top level, so they run in the global scope as
// they would at the top of an entry script (their variables become globals).

try {
    $__gsuper = new Worker(getenv());
} catch (CannotStart $e) { // a bad status fd: nothing to report on
    fwrite(\STDERR, 'gsuper ' . (getenv('GSUPER_PROGRAM') ?: 'php') . ': cannot start: ' . $e->getMessage() . "\n");
    exit(EXIT_CANNOT_START);
}
try {
    $__gsuper->configure(getenv());
} catch (CannotStart $e) {
    $__gsuper->cannotStart($e->getMessage());
}
$__gsuper->start();
foreach ($__gsuper->bootstrap as $__gsuper_file) {
    // require_once of a missing file is a fatal error, not an exception: look first.
    if (!is_file($__gsuper_file) || !is_readable($__gsuper_file)) {
        $__gsuper->cannotStart("bootstrap file not found or not readable: $__gsuper_file");
    }
    try {
        require_once $__gsuper_file;
    } catch (\Throwable $e) {
        $__gsuper->cannotStart("bootstrap file $__gsuper_file failed: " . Worker::describe($e), $e);
    }
}
unset($__gsuper_file, $e);
if ((string) getenv('GSUPER_TEMPLATE_FD') !== '') {
    $__gsuper = Template::serve($__gsuper, (string) getenv('GSUPER_TEMPLATE_FD')); // returns in each forked worker
}
if (($__gsuper_file = (string) getenv('GSUPER_AFTER_FORK')) !== '') {
    // Global scope, like the bootstrap: an app reconnects here (see docs/runners.md).
    if (!is_file($__gsuper_file) || !is_readable($__gsuper_file)) {
        $__gsuper->cannotStart("after_fork file not found or not readable: $__gsuper_file");
    }
    try {
        require $__gsuper_file;
    } catch (\Throwable $e) {
        $__gsuper->cannotStart("after_fork file $__gsuper_file failed: " . Worker::describe($e), $e);
    }
    unset($__gsuper_file, $e);
}
try {
    $__gsuper->run();
} catch (CannotStart $e) {
    $__gsuper->cannotStart($e->getMessage(), $e);
}
