<?php
/**
 * Drop N job files into the spool: php produce.php N [PREFIX]
 *
 * Each job file holds one job id (PREFIX-1 .. PREFIX-N). A job is written under a hidden
 * temporary name and renamed into place, so a consumer never sees a half-written file.
 * File names start with the time, so consumers take the oldest first.
 */

declare(strict_types=1);

$count = max(0, (int) ($argv[1] ?? 10));
$prefix = $argv[2] ?? 'job-' . getmypid();
$spool = rtrim(getenv('SPOOL_DIR') ?: __DIR__ . '/spool', '/');
if (!is_dir($spool) && !mkdir($spool, 0777, true) && !is_dir($spool)) {
    fwrite(STDERR, "cannot create the spool folder $spool\n");
    exit(1);
}

for ($i = 1; $i <= $count; $i++) {
    $name = sprintf('%.6f-%d-%06d.job', microtime(true), getmypid(), $i);
    $temporary = "$spool/.$name.tmp"; // hidden: the consumers' glob("*.job") skips it
    file_put_contents($temporary, "$prefix-$i");
    rename($temporary, "$spool/$name");
}
echo "queued $count jobs in $spool\n";
