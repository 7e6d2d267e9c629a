<?php
// A minimal Symfony Messenger 5.4 setup (Debian's php-symfony-messenger and its Redis bridge):
// one transport "async" on a Redis stream, one message class, one handler. The consumer name
// comes from MESSENGER_CONSUMER_NAME, as Symfony's docs set it per supervisor process.
require_once 'Symfony/Component/Messenger/autoload.php';
require_once 'Symfony/Component/Messenger/Bridge/Redis/autoload.php';
require_once 'Symfony/Component/Console/autoload.php';
require_once 'Symfony/Component/EventDispatcher/autoload.php';
require_once 'Psr/Container/autoload.php';

use Psr\Container\ContainerInterface;
use Symfony\Component\Messenger\Bridge\Redis\Transport\RedisTransportFactory;
use Symfony\Component\Messenger\Transport\Serialization\PhpSerializer;

final class Note
{
    public function __construct(public int $n) {}
}

final class Locator implements ContainerInterface
{
    public function __construct(private array $services) {}
    public function get(string $id): mixed { return $this->services[$id]; }
    public function has(string $id): bool { return isset($this->services[$id]); }
}

function transport(): Symfony\Component\Messenger\Transport\TransportInterface
{
    $dsn = 'redis://127.0.0.1:' . getenv('REDIS_PORT') . '/notes';
    $options = ['consumer' => getenv('MESSENGER_CONSUMER_NAME') ?: 'consumer', 'auto_setup' => true];
    return (new RedisTransportFactory())->createTransport($dsn, $options, new PhpSerializer());
}
