<?php
/**
 * One request: claim at most one job from the spool, process it, record it, delete it.
 *
 * Run by gsuper's PHP runner (script = consume.php), which includes this file once per
 * request in a fresh scope. Settings come from the environment:
 *   SPOOL_DIR  the spool folder (default: ./spool next to this file)
 *   JOB_MS     milliseconds a job takes to "process" (default 5)
 *   IDLE_MS    milliseconds to wait when there is no job (default 100)
 *
 * Claiming is a rename() into this worker's own processing folder: rename is atomic, so when
 * several workers race for a file exactly one wins. A job found in our own processing folder
 * at the start of a request was claimed by a previous life of this worker that died before
 * finishing it; it is done again (at-least-once: a job can be recorded twice, never lost).
 */

declare(strict_types=1);

$spool = rtrim(getenv('SPOOL_DIR') ?: __DIR__ . '/spool', '/');
$mine = sprintf(
    '%s/.processing/%s-%s',
    $spool,
    getenv('GSUPER_PROGRAM') ?: 'cli',
    getenv('GSUPER_WORKER') ?: '0',
);
if (!is_dir($mine)) {
    @mkdir($mine, 0777, true);
}

$unfinished = glob("$mine/*.job"); // a job of ours left by a previous life comes first
$job = $unfinished ? $unfinished[0] : null;
if ($job === null) {
    foreach (glob("$spool/*.job") ?: [] as $candidate) { // oldest first
        if (@rename($candidate, "$mine/" . basename($candidate))) {
            $job = "$mine/" . basename($candidate);
            break;
        }
        // Another worker took it first: try the next one.
    }
}

if ($job === null) {
    // Nothing to do. Wait a little here; gsuper's usleep between requests is the CPU guard.
    usleep(1000 * (is_numeric($ms = getenv('IDLE_MS')) ? (int) $ms : 100));
    return;
}

$id = trim((string) file_get_contents($job));
usleep(1000 * (is_numeric($ms = getenv('JOB_MS')) ? (int) $ms : 5)); // the "work"
file_put_contents("$spool/done.log", "$id\n", FILE_APPEND | LOCK_EX);
unlink($job); // acknowledged: done.log has it
