<?php
// Debian's php-laravel-framework (Laravel 8) and this example's App\ classes. A composer app
// requires vendor/autoload.php instead.
require_once 'Illuminate/autoload.php';
spl_autoload_register(static function (string $class): void {
    if (str_starts_with($class, 'App\\')) {
        require __DIR__ . '/app/app/' . str_replace('\\', '/', substr($class, 4)) . '.php';
    }
});
