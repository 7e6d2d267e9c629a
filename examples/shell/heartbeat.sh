#!/bin/sh
# A daemon-style shell worker: one heartbeat line per second until it is stopped.
# GREETING comes from bootstrap.sh; GSUPER_WORKER is the worker index given by gsuper.
# A TERM (or INT) lets the current iteration finish, then the script exits 0.

stopping=0
trap 'stopping=1' TERM INT

worker=${GSUPER_WORKER:-0}
beat=0

echo "worker $worker: started (pid $$)"
while [ "$stopping" -eq 0 ]; do
    beat=$((beat + 1))
    echo "$GREETING from worker $worker: heartbeat $beat"
    # In the background, so that a TERM interrupts the `wait` at once and the trap runs.
    # (2>/dev/null: the shell would report "Terminated" when the sleep got the TERM too.)
    sleep "${HEARTBEAT_SECONDS:-1}" &
    wait $! 2>/dev/null
done
wait 2>/dev/null # the last sleep, if the signal came to this shell only
echo "worker $worker: stopping after $beat heartbeats"
exit 0
