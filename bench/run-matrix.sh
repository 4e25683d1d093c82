#!/usr/bin/env bash
# The standard benchmark matrix on this machine: for each backend (SQLite in a
# temp dir, a fresh Postgres database) and TLS mode (off, self-signed), start
# a release kaching under /usr/bin/time, run kaching-bench closed loop at 1, 16
# and 64 connections and open loop at a fixed rate, stop the daemon, and print
# one table (also appended to bench/results/<date>.txt). See bench/README.md.
#
# Knobs (environment):
#   DURATION=20s           measured time of each run (plus a 500-post warm-up)
#   BACKENDS="sqlite postgres"
#   TLS_MODES="off self-signed"
#   CONNECTIONS="1 16 64"  closed-loop runs
#   RATE=1000              the open-loop run (RATE= to skip), over RATE_CONNECTIONS=64
#   DUPLICATES=0.01        fraction of posts that are ClickBank retries
#   FORGED=0               fraction of posts under a wrong key
#   FULL=1                 also a 60 s run at 64 connections per backend and
#                          TLS mode, in a daemon of its own (its peak RSS)
#   PG_ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres
#   LOG_LEVEL=info         the daemon's log.level (info: one line per post, as deployed)
#   ACTIONS=log            a `log` action, so every new notification also writes an
#                          outbox row and the dispatcher runs it (ACTIONS= for none)
#   LIVE=1                 keep the dashboard's live feed open (a `curl -N` on the
#                          admin listener's /events) during every run
#   KEEP=1                 keep the work directory (daemon logs, configs, bench outputs)
#   CARGO_TARGET_DIR       honoured: the binaries are taken from where cargo built them
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
# Where cargo puts the release binaries of the workspace (kaching and kaching-bench).
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac

DURATION=${DURATION:-20s}
BACKENDS=${BACKENDS:-"sqlite postgres"}
TLS_MODES=${TLS_MODES:-"off self-signed"}
CONNECTIONS=${CONNECTIONS:-"1 16 64"}
RATE=${RATE-1000}
RATE_CONNECTIONS=${RATE_CONNECTIONS:-64}
DUPLICATES=${DUPLICATES:-0.01}
FORGED=${FORGED:-0}
FULL=${FULL:-0}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
LOG_LEVEL=${LOG_LEVEL:-info}
ACTIONS=${ACTIONS-log}
LIVE=${LIVE:-0}
PG_DB=kaching_bench
KEY=BENCHMATRIXKEY01

TIME=/usr/bin/time
[ -x "$TIME" ] || { echo "run-matrix: needs GNU time at $TIME (apt-get install time)" >&2; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kaching-bench.XXXXXX")
DAEMON_PID=
TIME_PID=
PG_CREATED=0

say() { echo "run-matrix: $*" >&2; }

pg() { psql "$PG_ADMIN_URL" -v ON_ERROR_STOP=1 -qAtX "$@"; }

drop_pg() {
    if [ "$PG_CREATED" = 1 ]; then
        pg -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
        PG_CREATED=0
    fi
}

stop_daemon() {
    if [ -n "$DAEMON_PID" ]; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        wait "$TIME_PID" 2>/dev/null || true
        DAEMON_PID=
        TIME_PID=
    fi
}

cleanup() {
    stop_daemon
    drop_pg
    if [ "${KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + RANDOM % 20000))
}

# start_daemon DIR BACKEND TLS: writes DIR/kaching.toml, starts the daemon, waits for /healthz.
start_daemon() {
    local dir=$1 backend=$2 tls=$3 db_url port scheme
    port=$(free_port)
    ADMIN_PORT=$(free_port)
    case $backend in
        sqlite) db_url="sqlite://$dir/kaching.db" ;;
        postgres)
            pg -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" -c "CREATE DATABASE $PG_DB" >/dev/null
            PG_CREATED=1
            db_url="${PG_ADMIN_URL%/*}/$PG_DB"
            ;;
        *) say "unknown backend $backend"; return 1 ;;
    esac
    cat >"$dir/kaching.toml" <<EOF
[server]
listen = "127.0.0.1:$port"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[tls]
mode = "$tls"
self_signed_dir = "$dir/tls"

[database]
url = "$db_url"

[log]
format = "json"
level = "$LOG_LEVEL"

[[accounts]]
name = "bench"
secret_key = "$KEY"
EOF
    if [ "$ACTIONS" = log ]; then
        printf '\n[[actions]]\nname = "log"\nkind = "log"\n' >>"$dir/kaching.toml"
    fi
    "$TIME" -v -o "$dir/time.txt" "$TARGET/release/kaching" --config "$dir/kaching.toml" serve \
        >"$dir/daemon.log" 2>&1 &
    TIME_PID=$!
    # The daemon is GNU time's child; signals go to it, not to time.
    for _ in $(seq 1 50); do
        DAEMON_PID=$(pgrep -P "$TIME_PID" || true)
        [ -n "$DAEMON_PID" ] && break
        sleep 0.1
    done
    [ -n "$DAEMON_PID" ] || { say "the daemon did not start"; cat "$dir/daemon.log" >&2; return 1; }
    if [ "$tls" = off ]; then scheme=http; else scheme=https; fi
    URL="$scheme://127.0.0.1:$port/ins"
    DB_URL=$db_url
    for _ in $(seq 1 300); do
        if curl -skf --max-time 1 "$scheme://127.0.0.1:$port/healthz" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$DAEMON_PID" 2>/dev/null || break
        sleep 0.1
    done
    say "the daemon did not become healthy"
    cat "$dir/daemon.log" >&2
    return 1
}

# The stopped daemon's peak RSS in MiB, from GNU time's report.
peak_rss() {
    local dir=$1 kb
    kb=$(sed -n 's/.*Maximum resident set size (kbytes): *//p' "$dir/time.txt" 2>/dev/null)
    if [ -n "$kb" ]; then awk -v kb="$kb" 'BEGIN { printf "%.1f MiB", kb / 1024 }'; else echo "?"; fi
}

# summary_field FILE NAME: a value from kaching-bench's "summary:" line.
summary_field() {
    sed -n "s/^summary: .*\b$2=\([^ ]*\).*/\1/p" "$1" | tail -n 1
}

ROWS=()
NOTES=()

# run_bench DIR LABEL TLS ARGS...: one kaching-bench run; appends to RUN_ROWS.
run_bench() {
    local dir=$1 label=$2 tls=$3 out rc status
    shift 3
    out="$dir/bench-${label//[^a-z0-9]/_}.txt"
    local trust=()
    [ "$tls" = off ] || trust=(--ca-cert "$dir/tls/cert.pem")
    rc=0
    local live_pid=
    if [ "$LIVE" = 1 ]; then
        curl -sN "http://127.0.0.1:$ADMIN_PORT/events" >"$out.events" 2>/dev/null &
        live_pid=$!
    fi
    "$TARGET/release/kaching-bench" --url "$URL" --secret-key "$KEY" --database-url "$DB_URL" \
        "${trust[@]}" --duplicates "$DUPLICATES" --forged "$FORGED" "$@" >"$out" 2>&1 || rc=$?
    if [ -n "$live_pid" ]; then
        kill "$live_pid" 2>/dev/null || true
        wait "$live_pid" 2>/dev/null || true
        NOTES+=("$BACKEND/$tls $label: the live feed got $(grep -c '^event: notification' "$out.events" || true) events")
    fi
    status=$(summary_field "$out" verify)
    if [ -z "$status" ]; then
        status="ERROR"
        NOTES+=("$BACKEND/$tls $label: $(tail -n 1 "$out")")
    elif [ "$rc" != 0 ]; then
        # Only what went wrong: FAIL 5xx=N, err=N (no answer), unexp=N, verify.
        local why=() v
        for k in s5xx errors unexpected; do
            v=$(summary_field "$out" $k)
            [ "${v:-0}" = 0 ] || why+=("${k/s5xx/5xx}=$v")
        done
        [ "$status" = OK ] || why+=("verify")
        status="FAIL $(IFS=,; echo "${why[*]:-rc=$rc}")"
        status=${status/errors=/err=}
        status=${status/unexpected=/unexp=}
        NOTES+=("$BACKEND/$tls $label: $(grep -m1 '^FAILED' "$out" || true)")
    fi
    if grep -q 'stopped early' "$out"; then NOTES+=("$BACKEND/$tls $label: ran out of posts (pass --pool)"); fi
    RUN_ROWS+=("$(printf '%s|%s|%s|%s|%s|%s|%s|%s|%s' "$BACKEND" "$tls" "$label" \
        "$(summary_field "$out" acked_per_s)" "$(summary_field "$out" p50_ms)" \
        "$(summary_field "$out" p99_ms)" "$(summary_field "$out" p999_ms)" \
        "$(summary_field "$out" max_ms)" "$status")")
    say "  $label: $(summary_field "$out" acked_per_s) acked/s, p99 $(summary_field "$out" p99_ms) ms, $status"
}

# session BACKEND TLS RUNS...: one daemon for a list of runs ("c=N" or "r=N" or "c=N@T").
session() {
    local tls=$2 dir rss run n d
    BACKEND=$1
    shift 2
    dir=$(mktemp -d "$WORK/$BACKEND-$tls.XXXX")
    RUN_ROWS=()
    say "$BACKEND, tls $tls"
    if ! start_daemon "$dir" "$BACKEND" "$tls"; then
        NOTES+=("$BACKEND/$tls: the daemon did not start")
        stop_daemon
        drop_pg
        return 0
    fi
    for run in "$@"; do
        case $run in
            c=*@*) n=${run#c=}; d=${n#*@}; n=${n%@*}
                   run_bench "$dir" "c=$n/$d" "$tls" --connections "$n" --duration "$d" ;;
            c=*) run_bench "$dir" "$run" "$tls" --connections "${run#c=}" --duration "$DURATION" ;;
            r=*) run_bench "$dir" "$run" "$tls" --connections "$RATE_CONNECTIONS" --rate "${run#r=}" --duration "$DURATION" ;;
        esac
    done
    stop_daemon
    rss=$(peak_rss "$dir")
    local errors
    errors=$(grep -c '"level":"ERROR"' "$dir/daemon.log" || true)
    [ "$errors" = 0 ] || NOTES+=("$BACKEND/$tls: the daemon logged $errors ERROR line(s): $(grep -m1 '"level":"ERROR"' "$dir/daemon.log" | cut -c1-300)")
    drop_pg
    for row in "${RUN_ROWS[@]}"; do ROWS+=("$row|$rss"); done
}

say "building (release): the daemon and bench/'s kaching-bench"
cargo build --release -p kaching -p kaching-bench --bins --quiet

if [[ " $BACKENDS " == *" postgres "* ]] && ! pg -c 'SELECT 1' >/dev/null 2>&1; then
    say "cannot reach Postgres at $PG_ADMIN_URL: skipping the postgres backend"
    NOTES+=("postgres skipped: cannot connect to $PG_ADMIN_URL")
    BACKENDS=${BACKENDS//postgres/}
fi

RUNS=()
for c in $CONNECTIONS; do RUNS+=("c=$c"); done
[ -z "$RATE" ] || RUNS+=("r=$RATE")

for backend in $BACKENDS; do
    for tls in $TLS_MODES; do
        session "$backend" "$tls" "${RUNS[@]}"
        [ "$FULL" != 1 ] || session "$backend" "$tls" "c=64@60s"
    done
done

# The report.
pg_settings=""
if [[ " $BACKENDS " == *" postgres "* ]]; then
    pg_settings="postgres $(pg -c 'SHOW server_version' 2>/dev/null), fsync=$(pg -c 'SHOW fsync' 2>/dev/null), synchronous_commit=$(pg -c 'SHOW synchronous_commit' 2>/dev/null)"
fi
{
    echo "== kaching benchmark matrix, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "   commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)'); $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)); $(uname -sr)"
    echo "   each run: $DURATION after a 500-post warm-up; duplicates $DUPLICATES, forged $FORGED; daemon log.level=$LOG_LEVEL (json, to a file); actions: ${ACTIONS:-none}"
    [ -z "$pg_settings" ] || echo "   $pg_settings; SQLite: WAL, synchronous=FULL"
    echo "   generator, daemon and database share the machine; latency in ms; r=N: open loop, latency from the scheduled time"
    printf '%-8s  %-11s  %-8s  %9s  %8s  %8s  %8s  %9s  %-12s  %9s\n' \
        backend tls mode acked/s p50 p99 p99.9 max verify "peak RSS"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r b t m a p50 p99 p999 max v rss <<<"$row"
        printf '%-8s  %-11s  %-8s  %9s  %8s  %8s  %8s  %9s  %-12s  %9s\n' \
            "$b" "$t" "$m" "$a" "$p50" "$p99" "$p999" "$max" "$v" "$rss"
    done
    for n in "${NOTES[@]}"; do echo "   note: $n"; done
    echo
} | tee -a "$(mkdir -p "$ROOT/bench/results" && echo "$ROOT/bench/results/$(date -u +%F).txt")"
