#!/usr/bin/env bash
# kaching against the reference receivers of ../shared/yardstick/, in one run:
# the same load generator (yardstick's insload) drives kaching and the
# reference alternately, pair after pair, and the table gives each run's
# figures and kaching's ratio to the reference run beside it. Only ratios
# from one run mean anything: the generator, the receiver and the database
# share this machine's CPUs.
#
# For each backend: a kaching daemon and a reference receiver (`ceilings
# --mode pg-batch` / `sqlite-batch`, one writer, batches of up to 256) each
# get a fresh database. Per pair and concurrency, one closed-loop run of each
# (plain HTTP; kaching also over TLS when TLS_MODES has "self-signed": the
# reference has no TLS, so that ratio prices TLS in), then one open-loop run
# at RATE/s for latency. Each row: acked/s, p50/p99, the receiver's CPU per
# acknowledged notification (utime + stime from /proc/PID/stat), the
# database server's (every postgres process's, Postgres only), and for
# kaching the exactly-once check: every key insload saw answered 200 is one
# row, and the table grew by exactly that many rows.
#
# Knobs (environment):
#   DURATION=8             seconds per run
#   PAIRS=3                alternating kaching/reference pairs per setting
#   BACKENDS="postgres sqlite"
#   PG_CONNECTIONS="64"    closed-loop concurrency on Postgres
#   SQLITE_CONNECTIONS="16 64"
#   TLS_MODES="off"        add "self-signed" for kaching over TLS too
#   RATE=1000              the open-loop run (RATE= to skip)
#   DUPLICATES=0.05        retries (fresh IV, attemptCount 2), as ClickBank sends them
#   FORGED=0.01            posts under a wrong key (must get 4xx)
#   ACTIONS=log            one `log` action: every new notification also gets an
#                          outbox row that the dispatcher claims, runs, records
#   LOG_LEVEL=info
#   PG_ADMIN_URL=postgres://postgres@127.0.0.1:5432/postgres
#   YARDSTICK=../shared/yardstick   its binaries are built into target/yardstick
#   KEEP=1                 keep the work directory (logs, configs, JSON lines)
#   LIVE=1                 each kaching run again with the dashboard's live feed open
#                          (a `curl -N` on the admin listener's /events): "kaching+live"
#   BEFORE=path/to/kaching another kaching binary (an earlier commit's build) run
#                          beside this one in the same session, as "before"
#                          (plain HTTP only), for before/after figures
#   ALERTS=1               another daemon of this build with the shipped [[alerts]]
#                          rules (one of each kind, to the log action), plain HTTP,
#                          as "kaching+alerts": what evaluating alerts costs ingestion
#   PLAIN=1                another daemon of this build with privacy.encrypt = false
#                          (customer data stored in clear), plain HTTP, as
#                          "kaching-clear": what sealing customer data costs
#   PERF=1                 record a perf profile of the kaching daemon during its
#                          first closed-loop run per backend (perf.data in the work dir)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
case $TARGET in /*) ;; *) TARGET=$ROOT/$TARGET ;; esac
YARDSTICK=${YARDSTICK:-$ROOT/../shared/yardstick}
YT=$ROOT/target/yardstick/release

DURATION=${DURATION:-8}
PAIRS=${PAIRS:-3}
BACKENDS=${BACKENDS:-"postgres sqlite"}
PG_CONNECTIONS=${PG_CONNECTIONS:-64}
SQLITE_CONNECTIONS=${SQLITE_CONNECTIONS:-"16 64"}
TLS_MODES=${TLS_MODES:-off}
RATE=${RATE-1000}
DUPLICATES=${DUPLICATES:-0.05}
FORGED=${FORGED:-0.01}
ACTIONS=${ACTIONS-log}
LOG_LEVEL=${LOG_LEVEL:-info}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PERF=${PERF:-0}
LIVE=${LIVE:-0}
BEFORE=${BEFORE:-}
ALERTS=${ALERTS:-0}
PLAIN=${PLAIN:-0}
KEY=VERSUSBENCHKEY01
TICK=$(getconf CLK_TCK)

say() { echo "versus: $*" >&2; }
pg() { psql "$PG_ADMIN_URL" -v ON_ERROR_STOP=1 -qAtX "$@"; }

[ -d "$YARDSTICK" ] || { say "no yardstick at $YARDSTICK (set YARDSTICK=)"; exit 1; }
for tool in jq sqlite3 psql curl python3; do
    command -v "$tool" >/dev/null || { say "needs $tool (apt-get install jq sqlite3 postgresql-client curl python3)"; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kaching-versus.XXXXXX")
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for db in versus_kaching_off versus_kaching_self_signed versus_kaching_before versus_ref; do
        pg -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
    done
    if [ "${KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# cpu_ticks PID...: utime + stime of these processes, in clock ticks.
cpu_ticks() {
    local sum=0 p f
    for p in "$@"; do
        # Fields after the command (which may hold spaces): utime is the 12th, stime the 13th.
        f=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null) || continue
        set -- $f
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}

# machine_ticks: "idle total" jiffies of the whole machine (idle includes iowait).
machine_ticks() {
    awk '/^cpu /{t=0; for (i=2; i<=NF; i++) t+=$i; print $5+$6, t; exit}' /proc/stat
}

postgres_pids() { pgrep -x postgres || true; }

wait_healthy() {
    local url=$1 pid=$2
    for _ in $(seq 1 300); do
        curl -skf --max-time 1 "$url" >/dev/null 2>&1 && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# start_kaching DIR BACKEND TLS [VARIANT BINARY]: sets K_PID, K_URL, K_DB.
start_kaching() {
    local dir=$1 backend=$2 tls=$3 variant=${4:-$3} bin=${5:-$TARGET/release/kaching} port scheme
    port=$(free_port)
    K_ADMIN="http://127.0.0.1:$(free_port)"
    case $backend in
        sqlite) K_DB="sqlite://$dir/kaching.db" ;;
        postgres)
            local db=versus_kaching_${variant//-/_}
            pg -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
            # The reference is built without TLS, so it talks to Postgres in
            # plain text; kaching (built with TLS) would otherwise negotiate
            # TLS on loopback (sslmode=prefer). Same wire for both.
            K_DB="${PG_ADMIN_URL%/*}/$db?sslmode=disable"
            ;;
    esac
    cat >"$dir/kaching.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
[admin]
listen = "${K_ADMIN#http://}"
[tls]
mode = "$tls"
self_signed_dir = "$dir/tls"
[database]
url = "$K_DB"
[log]
format = "json"
level = "$LOG_LEVEL"
[[accounts]]
name = "bench"
secret_key = "$KEY"
EOF
    [ "$ACTIONS" != log ] || printf '[[actions]]\nname = "log"\nkind = "log"\n' >>"$dir/kaching.toml"
    # An earlier build (BEFORE) may not know [privacy]; this one keeps its key beside its database.
    if [ "$variant" != before ]; then
        printf '[privacy]\nencrypt = %s\ndata_key_file = "%s/kaching.key"\n' \
            "$([ "$variant" = clear ] && echo false || echo true)" "$dir" >>"$dir/kaching.toml"
    fi
    if [ "$variant" = alerts ]; then
        [ "$ACTIONS" = log ] || printf '[[actions]]\nname = "log"\nkind = "log"\n' >>"$dir/kaching.toml"
        for rule in refunds:refund_spike chargebacks:chargeback no-sales:silence \
            wrong-key:rejected_surge payload:schema_drift dead-letters:dead_letter; do
            printf '[[alerts]]\nname = "%s"\nkind = "%s"\nnotify = ["log"]\n' "${rule%%:*}" "${rule#*:}" >>"$dir/kaching.toml"
        done
    fi
    "$bin" --config "$dir/kaching.toml" serve >"$dir/daemon.log" 2>&1 &
    K_PID=$!
    PIDS+=("$K_PID")
    if [ "$tls" = off ]; then scheme=http; else scheme=https; fi
    K_URL="$scheme://127.0.0.1:$port/ins"
    wait_healthy "$scheme://127.0.0.1:$port/healthz" "$K_PID" || { say "kaching did not start"; cat "$dir/daemon.log" >&2; exit 1; }
}

# start_ref DIR BACKEND: sets R_PID, R_URL.
start_ref() {
    local dir=$1 backend=$2 port
    port=$(free_port)
    case $backend in
        sqlite) "$YT/ceilings" --mode sqlite-batch --listen "127.0.0.1:$port" --secret "$KEY" \
                    --sqlite-path "$dir/ref.sqlite" --truncate >"$dir/ref.log" 2>&1 & ;;
        postgres)
            pg -c "DROP DATABASE IF EXISTS versus_ref WITH (FORCE)" -c "CREATE DATABASE versus_ref" >/dev/null
            "$YT/ceilings" --mode pg-batch --listen "127.0.0.1:$port" --secret "$KEY" \
                --pg-url "${PG_ADMIN_URL%/*}/versus_ref" --truncate >"$dir/ref.log" 2>&1 & ;;
    esac
    R_PID=$!
    PIDS+=("$R_PID")
    R_URL="http://127.0.0.1:$port/"
    for _ in $(seq 1 100); do
        curl -s --max-time 1 -o /dev/null "$R_URL" 2>/dev/null && return 0
        sleep 0.1
    done
    say "the reference did not start"; cat "$dir/ref.log" >&2; exit 1
}

# rows BACKEND DBURL: rows in kaching's notifications table.
rows() {
    case $1 in
        sqlite) sqlite3 "${2#sqlite://}" "SELECT count(*) FROM notifications" ;;
        postgres) psql "$2" -qAtX -c "SELECT count(*) FROM notifications" ;;
    esac
}

# missing BACKEND DBURL FILE: keys of FILE ("receipt,type") with no row.
missing() {
    case $1 in
        sqlite) sqlite3 "${2#sqlite://}" ".mode csv" "CREATE TEMP TABLE acked(receipt TEXT, t TEXT)" \
                    ".import $3 acked" \
                    "SELECT count(*) FROM acked a WHERE NOT EXISTS (SELECT 1 FROM notifications n WHERE n.receipt = a.receipt AND n.transaction_type = a.t)" ;;
        postgres) psql "$2" -qAtX -v ON_ERROR_STOP=1 \
                    -c "CREATE TEMP TABLE acked(receipt text, t text)" \
                    -c "\\copy acked FROM '$3' CSV" \
                    -c "SELECT count(*) FROM acked a WHERE NOT EXISTS (SELECT 1 FROM notifications n WHERE n.receipt = a.receipt AND n.transaction_type = a.t)" | tail -n 1 ;;
    esac
}

ROWS=()
NOTES=()

# run WHO BACKEND LABEL PID URL DB TLS ARGS...: one insload run; appends a row.
run() {
    local who=$1 backend=$2 label=$3 pid=$4 url=$5 db=$6 tls=$7
    shift 7
    local out="$WORK/$backend-$who-${label//[^a-z0-9]/_}-$RANDOM"
    local before_rows=0 c0 c1 p0 p1 pgpids=() insecure=() perf_pid=
    local live_pid=
    [ "$who" = reference ] || before_rows=$(rows "$backend" "$db")
    if [ "$who" = kaching+live ]; then
        curl -sN "$LIVE_URL/events" >"$out.events" 2>/dev/null &
        live_pid=$!
    fi
    [ "$tls" = off ] || insecure=(--insecure)
    [ "$backend" != postgres ] || mapfile -t pgpids < <(postgres_pids)
    c0=$(cpu_ticks "$pid")
    p0=$(cpu_ticks "${pgpids[@]}")
    read -r i0 t0 < <(machine_ticks)
    if [ "$PERF" = 1 ] && [ "$who" = kaching ] && [ -z "${PERFED[$backend]:-}" ]; then
        PERFED[$backend]=1
        perf record -F 199 --call-graph dwarf,32768 -p "$pid" -o "$WORK/perf-$backend.data" -- sleep "$DURATION" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    "$YT/insload" --url "$url" --secret "$KEY" "${insecure[@]}" --duration "$DURATION" \
        --dup-ratio "$DUPLICATES" --dup-fresh-iv --bad-ratio "$FORGED" \
        --receipts-out "$out.keys" --json-out "$out.json" --label "$who" "$@" >"$out.txt" 2>&1 || true
    c1=$(cpu_ticks "$pid")
    p1=$(cpu_ticks "${pgpids[@]}")
    read -r i1 t1 < <(machine_ticks)
    [ -z "$perf_pid" ] || wait "$perf_pid" || true
    if [ -n "$live_pid" ]; then
        kill "$live_pid" 2>/dev/null || true
        wait "$live_pid" 2>/dev/null || true
        NOTES+=("$backend $label kaching+live: the live feed got $(grep -c '^event: notification' "$out.events" || true) events")
    fi
    local j="$out.json"
    [ -s "$j" ] || { NOTES+=("$backend $who $label: insload wrote no summary: $(tail -n 2 "$out.txt" | tr '\n' ' ')"); return; }
    local acked thr p50 p99 ok errs
    acked=$(jq -r '.fresh_200 + .dup_200' "$j")
    thr=$(jq -r '(.fresh_200 + .dup_200) / .elapsed_s | floor' "$j")
    p50=$(jq -r '.p50_us / 1000' "$j")
    p99=$(jq -r '.p99_us / 1000' "$j")
    ok=$(jq -r 'if .checks_ok then "ok" else "CHECKS FAILED" end' "$j")
    errs=$(jq -r '.transport_errors' "$j")
    [ "$errs" = 0 ] || ok="$ok, $errs transport errors"
    local cpu="-" dbcpu="-" idle="-"
    [ "$t1" -le "$t0" ] || idle=$(( (i1 - i0) * 100 / (t1 - t0) ))
    if [ "$acked" -gt 0 ]; then
        cpu=$(( (c1 - c0) * 1000000 / TICK / acked ))
        [ "$backend" != postgres ] || dbcpu=$(( (p1 - p0) * 1000000 / TICK / acked ))
    fi
    if [ "$who" != reference ]; then
        local after unique miss
        sleep 0.5
        after=$(rows "$backend" "$db")
        unique=$(jq -r '.unique_acked' "$j")
        miss=$(missing "$backend" "$db" "$out.keys")
        if [ "$miss" != 0 ] || [ $((after - before_rows)) != "$unique" ]; then
            ok="$ok; EXACTLY-ONCE FAILED: $miss acked keys missing, $((after - before_rows)) new rows for $unique keys"
        else
            ok="$ok; exactly once ($unique)"
        fi
    fi
    ROWS+=("$backend|$label|$who|$thr|$p50|$p99|$cpu|$dbcpu|$idle|$ok")
    say "  $backend $label $who: $thr acked/s, p99 $p99 ms, cpu ${cpu} us/ack, db ${dbcpu} us/ack, machine idle ${idle} %, $ok"
}

declare -A PERFED=()
KACHINGS=kaching
[ "$LIVE" != 1 ] || KACHINGS="kaching kaching+live"

say "building kaching (release) and the yardstick"
cargo build --release --locked -p kaching --bins --quiet
cargo build --release --locked --quiet --manifest-path "$YARDSTICK/Cargo.toml" --target-dir "$ROOT/target/yardstick"

for backend in $BACKENDS; do
    if [ "$backend" = postgres ] && ! pg -c 'SELECT 1' >/dev/null 2>&1; then
        NOTES+=("postgres skipped: cannot connect to $PG_ADMIN_URL"); continue
    fi
    if [ "$backend" = postgres ]; then conns=$PG_CONNECTIONS; else conns=$SQLITE_CONNECTIONS; fi
    # By variant: a TLS mode of this build, or "before" (the BEFORE binary, plain HTTP).
    declare -A KP=() KU=() KD=() KA=() KL=() KT=()
    for tls in $TLS_MODES ${BEFORE:+before} $([ "$ALERTS" != 1 ] || echo alerts) $([ "$PLAIN" != 1 ] || echo clear); do
        d=$(mktemp -d "$WORK/$backend-kaching-$tls.XXXX")
        if [ "$tls" = before ]; then
            start_kaching "$d" "$backend" off before "$BEFORE"
            KT[$tls]=off
        elif [ "$tls" = alerts ] || [ "$tls" = clear ]; then
            start_kaching "$d" "$backend" off "$tls"
            KT[$tls]=off
        else
            start_kaching "$d" "$backend" "$tls"
            KT[$tls]=$tls
        fi
        KP[$tls]=$K_PID KU[$tls]=$K_URL KD[$tls]=$K_DB KA[$tls]=$K_ADMIN KL[$tls]=$d/daemon.log
    done
    d=$(mktemp -d "$WORK/$backend-ref.XXXX")
    start_ref "$d" "$backend"
    say "$backend: kaching pid(s) ${KP[*]}, reference pid $R_PID"
    for c in $conns; do
        for pair in $(seq 1 "$PAIRS"); do
            for v in "${!KP[@]}"; do
                tls=${KT[$v]} whos=$KACHINGS
                [ "$v" != before ] || whos=before
                [ "$v" != alerts ] || whos=kaching+alerts
                [ "$v" != clear ] || whos=kaching-clear
                engine=(--engine hyper)
                [ "$tls" = off ] || engine=(--engine reqwest)
                for who in $whos; do
                    LIVE_URL=${KA[$v]}
                    run "$who" "$backend" "c=$c tls=$tls" "${KP[$v]}" "${KU[$v]}" "${KD[$v]}" "$tls" \
                        --concurrency "$c" --requests $((DURATION * 40000)) "${engine[@]}"
                done
            done
            run reference "$backend" "c=$c tls=off" "$R_PID" "$R_URL" - off \
                --concurrency "$c" --requests $((DURATION * 40000)) --engine hyper
        done
    done
    if [ -n "$RATE" ]; then
        for pair in $(seq 1 "$PAIRS"); do
            for v in "${!KP[@]}"; do
                tls=${KT[$v]} whos=$KACHINGS
                [ "$v" != before ] || whos=before
                [ "$v" != alerts ] || whos=kaching+alerts
                [ "$v" != clear ] || whos=kaching-clear
                for who in $whos; do
                    LIVE_URL=${KA[$v]}
                    run "$who" "$backend" "r=$RATE tls=$tls" "${KP[$v]}" "${KU[$v]}" "${KD[$v]}" "$tls" --rate "$RATE"
                done
            done
            run reference "$backend" "r=$RATE tls=off" "$R_PID" "$R_URL" - off --rate "$RATE"
        done
    fi
    for tls in "${!KP[@]}"; do
        NOTES+=("$backend kaching $tls: peak RSS $(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/${KP[$tls]}/status")")
        kill -TERM "${KP[$tls]}"
        wait "${KP[$tls]}" 2>/dev/null || true
        errors=$(grep -c '"level":"ERROR"' "${KL[$tls]}" || true)
        [ "$errors" = 0 ] || NOTES+=("$backend kaching $tls: $errors ERROR lines in its log")
    done
    NOTES+=("$backend reference: peak RSS $(awk '/VmHWM/ { printf "%.1f MiB", $2 / 1024 }' "/proc/$R_PID/status")")
    kill -TERM "$R_PID"
    wait "$R_PID" 2>/dev/null || true
    unset KP KU KD KA KL KT
done

# The report: each kaching row with its ratio to the median of the reference
# runs of the same backend and load (throughput: kaching / reference; CPU and
# p99: kaching / reference, so lower is better there).
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "" }'; }
ref_median() { # BACKEND LOAD FIELD
    for r in "${ROWS[@]}"; do
        IFS='|' read -r b l w thr p50 p99 cpu db idle ok <<<"$r"
        [ "$b" = "$1" ] && [ "$w" = reference ] && [ "${l%% tls=*}" = "$2" ] || continue
        case $3 in thr) echo "$thr" ;; p99) echo "$p99" ;; cpu) echo "$cpu" ;; db) echo "$db" ;; esac
    done | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b }'; }
{
    echo "== kaching versus the yardstick reference, $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "   commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with local changes)'); $(nproc) CPUs; $DURATION s per run, $PAIRS pairs; retries $DUPLICATES (fresh IV), forged $FORGED; kaching: log.level=$LOG_LEVEL, actions: ${ACTIONS:-none}"
    echo "   cpu, db: microseconds of receiver / database-server CPU per acknowledged notification; x: kaching / median reference of the same load;"
    echo "   idle%: the whole machine's idle share during the run (well above 0 under a closed loop: bound by waiting, not by CPU)"
    printf '%-8s  %-16s  %-12s  %8s %7s  %7s %7s  %6s %6s  %6s %6s  %5s  %s\n' \
        backend load who acked/s x p99ms x cpu x db x idle% check
    for r in "${ROWS[@]}"; do
        IFS='|' read -r b l w thr p50 p99 cpu db idle ok <<<"$r"
        load=${l%% tls=*}
        if [ "$w" != reference ]; then
            xt=$(ratio "$thr" "$(ref_median "$b" "$load" thr)")
            xp=$(ratio "$p99" "$(ref_median "$b" "$load" p99)")
            xc=$(ratio "$cpu" "$(ref_median "$b" "$load" cpu)")
            xd=$(ratio "$db" "$(ref_median "$b" "$load" db)")
        else
            xt= xp= xc= xd=
        fi
        printf '%-8s  %-16s  %-12s  %8s %7s  %7s %7s  %6s %6s  %6s %6s  %5s  %s\n' \
            "$b" "$l" "$w" "$thr" "$xt" "$p99" "$xp" "$cpu" "$xc" "$db" "$xd" "$idle" "$ok"
    done
    for n in "${NOTES[@]}"; do echo "   note: $n"; done
    echo
} | tee -a "$(mkdir -p "$ROOT/bench/results" && echo "$ROOT/bench/results/$(date -u +%F)-versus.txt")"
