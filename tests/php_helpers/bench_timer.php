<?php
// A bootstrap for the speed test: prints the ns per request of the whole worker life at exit.
$GLOBALS['benchStart'] = hrtime(true);
register_shutdown_function(static function (): void {
    $n = (int) getenv('GSUPER_MAX_REQUEST');
    fprintf(STDERR, "bench %.3f\n", (hrtime(true) - $GLOBALS['benchStart']) / $n);
});
