<?php
/**
 * After the fork (warm) or the bootstrap (cold): drop connections the boot may have opened, so
 * that this worker opens its own (a socket shared with the template or a sibling would mix
 * their replies), and forget the resolved queue connections.
 */
Gsuper\Laravel\Bridge::afterFork();
