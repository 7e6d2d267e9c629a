<?php
/**
 * gsuper bootstrap of the Laravel bridge: boots the application once, as `artisan queue:work`
 * does before its loop (configuration, service providers, the queue worker). With warm = true
 * this runs once, in the template; every worker is forked from the booted application.
 *
 * LARAVEL_APP: the application's base folder (default: the example app beside this file).
 * Connections are opened lazily by Laravel, so none is open yet at the fork; after_fork.php
 * drops any that the boot opened anyway.
 */
require_once __DIR__ . '/autoload.php';
require_once __DIR__ . '/Bridge.php';
define('LARAVEL_START', microtime(true));
$app = require (getenv('LARAVEL_APP') ?: __DIR__ . '/app') . '/bootstrap/app.php';
$app->make(Illuminate\Contracts\Console\Kernel::class)->bootstrap();
Gsuper\Laravel\Bridge::boot($app);
