<?php

declare(strict_types=1);

namespace App;

/** A tiny service container: named factories, each called once, on first use. */
final class Container
{
    private static ?self $instance = null;

    /** @var array<string, \Closure(self): mixed> */
    private array $factories = [];

    /** @var array<string, mixed> */
    private array $services = [];

    public static function instance(): self
    {
        return self::$instance ?? throw new \LogicException('bootstrap/app.php has not been loaded');
    }

    public static function setInstance(self $container): void
    {
        self::$instance = $container;
    }

    public function set(string $id, \Closure $factory): void
    {
        $this->factories[$id] = $factory;
        unset($this->services[$id]);
    }

    public function get(string $id): mixed
    {
        if (!array_key_exists($id, $this->services)) {
            $factory = $this->factories[$id] ?? throw new \OutOfBoundsException("no service named $id");
            $this->services[$id] = $factory($this);
        }
        return $this->services[$id];
    }
}
