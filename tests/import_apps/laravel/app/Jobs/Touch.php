<?php
namespace App\Jobs;

// A job as the payload names it ("job": "App\\Jobs\\Touch"): the worker calls fire($job, $data).
class Touch
{
    public function fire($job, array $data): void
    {
        usleep(50000); // a job that takes a moment, so that several workers share the queue
        file_put_contents(getenv('DONE_DIR') . '/' . $data['n'], getmypid());
        $job->delete();
    }
}
