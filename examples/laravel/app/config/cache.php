<?php
return ['default' => 'array', 'stores' => ['array' => ['driver' => 'array']], 'prefix' => 'gsuper_warm'];
