<?php
// The application, as a Laravel 8 app's bootstrap/app.php creates it (here: only what a queue
// worker needs, from Debian's php-laravel-framework).
$app = new Illuminate\Foundation\Application(dirname(__DIR__));
$app->singleton(Illuminate\Contracts\Console\Kernel::class, Illuminate\Foundation\Console\Kernel::class);
$app->singleton(Illuminate\Contracts\Debug\ExceptionHandler::class, Illuminate\Foundation\Exceptions\Handler::class);
return $app;
