<?php
// A bootstrap that dies of a real fatal error (not an exception).
trigger_error('bootstrap fatal', E_USER_ERROR);
