<?php
/**
 * A stand-in for Composer's vendor/autoload.php: a PSR-4 autoloader mapping App\ to src/.
 * (A real project would run `composer dump-autoload` and use the generated file.)
 */

declare(strict_types=1);

spl_autoload_register(static function (string $class): void {
    $prefix = 'App\\';
    if (!str_starts_with($class, $prefix)) {
        return;
    }
    $file = dirname(__DIR__) . '/src/' . str_replace('\\', '/', substr($class, strlen($prefix))) . '.php';
    if (is_file($file)) {
        require $file;
    }
});
