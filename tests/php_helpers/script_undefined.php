<?php
// Calling an undefined function: in PHP 8 an \Error exception, a failed request.
gsuper_test_no_such_function();
