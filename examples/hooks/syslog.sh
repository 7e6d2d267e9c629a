#!/bin/sh
# A gsuper event hook: one syslog line per event, with logger (util-linux / bsdutils).
#   [hook:syslog]
#   events  = started, fatal, backoff, crashed, max_request, memory_limit, request_timeout
#   command = examples/hooks/syslog.sh
# Tag `gsuper`; priority user.err for fatal, crashed and backoff, user.warning for memory_limit and
# request_timeout, user.notice otherwise. GSUPER_SYSLOG_SOCKET, when set, names the socket to
# write to instead of /dev/log (journald and rsyslog both listen on /dev/log).
set -eu
event=$(cat)
case "${GSUPER_EVENT:-}" in
  fatal|crashed|backoff) priority=user.err ;;
  memory_limit|request_timeout) priority=user.warning ;;
  *) priority=user.notice ;;
esac
who="${GSUPER_PROGRAM:-master}${GSUPER_WORKER:+#$GSUPER_WORKER}"
if [ -n "${GSUPER_SYSLOG_SOCKET:-}" ]; then
  exec logger --socket "$GSUPER_SYSLOG_SOCKET" -t gsuper -p "$priority" -- "$GSUPER_EVENT $who $event"
fi
exec logger -t gsuper -p "$priority" -- "$GSUPER_EVENT $who $event"
