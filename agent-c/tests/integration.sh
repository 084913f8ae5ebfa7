#!/bin/sh
# integration.sh BUILD_DIR - the POSIX agent against a real mosquitto broker,
# with otamq-testpeer playing the broker's OTA role (offer, block serving).
# Scenarios: healthy update (v5, supervised, lossy blocks), crashing,
# health-failing and hanging firmware (each must roll back), firmware that
# crash-loops after confirming (reboot trigger), power loss in the middle of
# a download (must resume), and MQTT 3.1.1.
set -u
B=${1:-build}
T=$(mktemp -d "${TMPDIR:-/tmp}/otamq-it.XXXXXX")
PASS=0
FAIL=0
PIDS=""

cleanup() {
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ "$FAIL" -eq 0 ]; then rm -rf "$T"; else echo "integration: logs kept in $T"; fi
}
trap cleanup EXIT INT TERM

# wait_for FILE REGEX SECONDS: poll until a line matches (no fixed sleeps)
wait_for() {
    i=0
    while [ "$i" -lt $(($3 * 10)) ]; do
        grep -Eq "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
        i=$((i + 1))
    done
    echo "  timeout waiting for /$2/ in $1" >&2
    return 1
}

ok() { PASS=$((PASS + 1)); echo "  ok   $1"; }
bad() { FAIL=$((FAIL + 1)); echo "  FAIL $1"; }

# a free loopback port, and mosquitto on it
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
PORT=$("$B/otamq-testtool" free-port) || exit 1
cat >"$T/mosquitto.conf" <<CONF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
CONF
"$MOSQUITTO" -c "$T/mosquitto.conf" >"$T/mosquitto.log" 2>&1 &
PIDS="$PIDS $!"
if ! "$B/otamq-testtool" wait-port "$PORT" 10; then
    echo "mosquitto did not start"
    cat "$T/mosquitto.log"
    FAIL=1
    exit 1
fi
URL="mqtt://127.0.0.1:$PORT"

"$B/otamq-testtool" keygen "$T/pub.pem" "$T/priv.pem" || exit 1
FAST="--heartbeat-ms 500 --request-timeout-ms 700 --backoff-min-ms 200 --backoff-max-ms 1000 \
 --trial-timeout-ms 20000 --probation-ms 2500 --block-size 1024 --watchdog-ms 1000"

# scenario NAME BEHAVIOUR [agent flags...]: starts peer and agent
start() {
    name=$1; beh=$2; shift 2
    "$B/otamq-testtool" image "$T/$name.img" 24000 "$beh" 1.1.0 ${IMG_DELAY:-3} || exit 1
    "$B/otamq-testtool" offer "$T/$name.offer" "$T/priv.pem" "$T/$name.img" "r-$name" 7 || exit 1
    "$B/otamq-testpeer" "$URL" "dev-$name" "$T/$name.offer" "$T/$name.img" ${DROP:-0} ${DELAY:-0} \
        >"$T/$name.peer" 2>&1 &
    PIDS="$PIDS $!"
    wait_for "$T/$name.peer" "peer ready" 10 || return 1
    "$B/otamq-agent" --broker "$URL" --id "dev-$name" --token secret --data-dir "$T/$name.d" \
        --key "$T/pub.pem" $FAST "$@" >"$T/$name.agent" 2>&1 &
    AGENT=$!
    PIDS="$PIDS $AGENT"
}

echo "integration: mosquitto on port $PORT"

DROP=5 start healthy healthy --supervise
if wait_for "$T/healthy.peer" "event code=11 " 30 && wait_for "$T/healthy.peer" "hb state=6 " 20 &&
    grep -q "birth version=1.1.0 slot=1 reason=5" "$T/healthy.peer"; then
    ok "healthy image: downloaded with lost blocks, installed, confirmed, committed"
else bad "healthy image"; fi

start crash crash --supervise
if wait_for "$T/crash.peer" "event code=14 error=8" 30 &&
    wait_for "$T/crash.peer" "birth version=1.0.0 slot=0 reason=6" 10; then
    ok "image crashing at boot: rolled back by the bootloader"
else bad "crashing image"; fi

start sick health-fail --supervise --trial-timeout-ms 3000
if wait_for "$T/sick.peer" "event code=12 error=9" 30 &&
    wait_for "$T/sick.peer" "event code=14 error=9" 20 &&
    wait_for "$T/sick.peer" "birth version=1.0.0" 10; then
    ok "image failing its health check: rolled back"
else bad "health-failing image"; fi

start hang hang --supervise
if wait_for "$T/hang.peer" "event code=14 error=8" 30 &&
    wait_for "$T/hang.peer" "birth version=1.0.0 slot=0 reason=6" 10; then
    ok "hanging image: watchdog reset, rolled back"
else bad "hanging image"; fi

# crashes after confirming (event 11 first, so the bootloader no longer
# reverts on its own): the reboot trigger (more than 3 boots within the
# window) makes the agent go back to the previous slot
IMG_DELAY=2 start loop crash-later --supervise --probation-ms 120000
if wait_for "$T/loop.peer" "event code=11 " 30 &&
    wait_for "$T/loop.peer" "event code=14 error=8" 60 &&
    wait_for "$T/loop.peer" "birth version=1.0.0 slot=0 reason=6" 10; then
    ok "image crash-looping after confirm: rolled back by the reboot trigger"
else bad "crash loop after confirm"; fi

# power loss mid-download: SIGKILL, then start again (no --supervise)
DELAY=20 start cut healthy
if wait_for "$T/cut.peer" "request offset=(8192|9216|1[0-9]{4}) " 30; then
    kill -9 "$AGENT"
    wait "$AGENT" 2>/dev/null
    n=$(grep -c '^birth' "$T/cut.peer")
    "$B/otamq-agent" --broker "$URL" --id dev-cut --token secret --data-dir "$T/cut.d" \
        --key "$T/pub.pem" $FAST --supervise >"$T/cut.agent2" 2>&1 &
    PIDS="$PIDS $!"
    # the first request after the new birth must continue, not restart at 0
    if wait_for "$T/cut.peer" "hb state=6 " 40 &&
        awk -v n="$n" '/^birth/{b++} b>n && /^request/{print; exit}' "$T/cut.peer" |
        grep -Eq "request offset=[1-9]"; then
        ok "power loss during download: resumed from the persisted offset"
    else bad "power loss resume"; fi
else bad "power loss (download did not progress)"; fi

start v3 healthy --supervise --mqtt-v3
if wait_for "$T/v3.peer" "hb state=6 " 30; then
    ok "MQTT 3.1.1 mode"
else bad "MQTT 3.1.1 mode"; fi

echo "integration: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
