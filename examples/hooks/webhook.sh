#!/bin/sh
# A gsuper event hook: POST the event (the JSON object on stdin) to a webhook URL with curl.
#   [hook:alert]
#   events  = fatal, backoff, crashed
#   command = examples/hooks/webhook.sh https://hooks.example.com/T0/B0/XXXX
# The URL is the first argument, or GSUPER_WEBHOOK_URL from the master's environment.
# curl gives up after 10 s (the hook's own timeout stays the last resort) and fails on an HTTP error,
# so the master log says "hook alert exited 22 ..." when the receiver refuses it.
set -eu
url="${1:-${GSUPER_WEBHOOK_URL:-}}"
if [ -z "$url" ]; then
  echo "webhook.sh: give the webhook URL as the first argument or in GSUPER_WEBHOOK_URL" >&2
  exit 2
fi
exec curl --fail --silent --show-error --max-time 10 --retry 2 --retry-delay 1 \
  -H 'Content-Type: application/json' -H "X-Gsuper-Event: ${GSUPER_EVENT:-}" \
  --data-binary @- "$url"
