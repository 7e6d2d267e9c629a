# Bootstrap hook of the shell example, sourced by gsuper's shell runner before heartbeat.sh
# is exec'd. The runner sources it with `set -a` on: every variable set here is exported.
GREETING="${GREETING:-hello}"
HEARTBEAT_SECONDS="${HEARTBEAT_SECONDS:-1}"
