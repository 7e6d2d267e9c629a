<?php
throw new \RuntimeException('bootstrap exploded');
