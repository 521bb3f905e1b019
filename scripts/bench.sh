#!/usr/bin/env bash
# Runs the fan-out benchmark scenarios against wschat and the exercise
# baseline, the server pinned to core 0 and the generator to core 1, each run
# with a fresh server; prints every table and a summary of medians.
#
#   scripts/bench.sh                 all scenarios, 3 runs each
#   RUNS=5 scripts/bench.sh c        one scenario, 5 runs
#   TARGETS=wschat scripts/bench.sh a
#   EXTRA="--read-every 200" OUT=target/bench-rounds scripts/bench.sh c
#   SERVER_ARGS="--db target/bench.db" TARGETS=wschat scripts/bench.sh a c g
#   SERVER=/path/to/other/build/server TARGETS=wschat scripts/bench.sh a
#   TARGETS="wschat redis cluster" scripts/bench.sh a c
#
# Scenarios (see benches/fanout.rs): a N=1000 S=10 find-max; b N=100 S=10
# find-max; c N=1000 S=10 at 50 msg/s; d 5000 idle connections (IDLE=15000
# for more); e N=100 S=100 find-max; f as a with one client that never reads;
# g N=1000 in 100 rooms of 10, every client sending (JSON), find-max, with the
# senders' acknowledgement p99 (run it with SERVER_ARGS="--db ..."); h g's
# clients at a fixed rate, RATE_H messages/s (default 26000, about half of
# g's maximum with --db), for the acknowledgement p99 there; abuse:
# scenario c while benches/abuse.rs runs every attack in turn, each from
# ten addresses (127.0.1.2 to 127.0.10.2), against default caps, with the
# server's peak RSS (compare with c in the same sitting, DURATION=30); ATTACKS="--only
# flood" runs only the attacks whose name contains "flood".
# Targets: wschat (one node, memory), redis (one node on a fresh
# redis-server), cluster (two nodes on one fresh redis-server, the clients
# split between them), exercise (the classic broadcast exercise). Redis and
# every node share core 0, and their CPU and RSS figures are those of the
# nodes and Redis together. The Redis targets save each run's `redis-cli info
# commandstats` next to its table.
# SERVER_ARGS go to wschat's server; a --db file named there is removed
# before each run, so every run starts from an empty history.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
TARGETS=${TARGETS:-"wschat exercise"}
SCENARIOS=${*:-"a b c d e f"}
DURATION=${DURATION:-3}
# The abuse scenario measures for at least 30 s: every attack (2 s each)
# runs at least once meanwhile. Compare it with DURATION=30 ... c.
ABUSE_DURATION=$(( DURATION > 30 ? DURATION : 30 ))
PORT=${PORT:-2100}
OUT=${OUT:-target/bench}
EXTRA=${EXTRA:-}
ATTACKS=${ATTACKS:-}
SERVER=${SERVER:-./target/release/server}
SERVER_ARGS=${SERVER_ARGS:-}
REDIS_PORT=${REDIS_PORT:-$((PORT + 50))}
EXTRA_PIDS=""
mkdir -p "$OUT"

cargo build --release --bins --examples --benches --quiet
BENCH=$(ls -t target/release/deps/fanout-* | grep -v '\.d$' | head -1)
ABUSE=$(ls -t target/release/deps/abuse-* | grep -v '\.d$' | head -1)

start_server() {
    case "$1" in
        wschat)
            # shellcheck disable=SC2086
            set -- $SERVER_ARGS
            while [ $# -gt 0 ]; do
                if [ "$1" = --db ]; then rm -f "$2" "$2-wal" "$2-shm"; fi
                shift
            done
            # Every benchmark client comes from 127.0.0.1: no per-address cap
            # (older builds, measured for comparison, have none to lift),
            # except under attack, where the default cap (1000) is part of
            # the defence and still fits the generator's clients; so is the
            # default connection cap (10000).
            local caps="--max-connections 30000"
            if [ "$scenario" = abuse ]; then
                caps=""
            elif "$SERVER" --help | grep -q -- --max-per-ip; then
                caps="$caps --max-per-ip 0"
            fi
            # shellcheck disable=SC2086
            taskset -c 0 "$SERVER" --port "$PORT" $RATE_ARGS $caps $SERVER_ARGS 2>/dev/null &
            ;;
        redis|cluster)
            taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
            EXTRA_PIDS="$!"
            for _ in $(seq 100); do
                redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
                sleep 0.05
            done
            local node_args=(--redis "redis://127.0.0.1:$REDIS_PORT" --max-connections 30000 --max-per-ip 0)
            if [ "$1" = cluster ]; then
                # shellcheck disable=SC2086
                taskset -c 0 "$SERVER" --port "$((PORT + 1))" $RATE_ARGS "${node_args[@]}" 2>/dev/null &
                EXTRA_PIDS="$EXTRA_PIDS $!"
            fi
            # shellcheck disable=SC2086
            taskset -c 0 "$SERVER" --port "$PORT" $RATE_ARGS "${node_args[@]}" 2>/dev/null &
            ;;
        exercise) taskset -c 0 ./target/release/examples/exercise_server "127.0.0.1:$PORT" 2>/dev/null & ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "error: $1 did not start" >&2
    exit 1
}

for scenario in $SCENARIOS; do
    for target in $TARGETS; do
        for run in $(seq "$RUNS"); do
            # Flood control off, so the generator's senders are never
            # refused; under attack it is on, as a real server's would be,
            # with room for the senders (5 messages/s each, 50/s together
            # from 127.0.0.1) and none for the attacker (from 127.0.0.2).
            RATE_ARGS="--rate 0"
            if [ "$scenario" = abuse ]; then RATE_ARGS="--rate 60 --rate-burst 30"; fi
            start_server "$target"
            # The abuse scenario is scenario c while one attacker process
            # runs every attack in turn (benches/abuse.rs), from 5 s on:
            # the load's clients are in by then, as a chat's users are when
            # an attack begins (newcomers during it are the attacker's own
            # probe, in "silent sockets").
            measured=$scenario
            attacker=""
            if [ "$scenario" = abuse ]; then
                measured=c
                # shellcheck disable=SC2086
                taskset -c 1 "$ABUSE" --url "ws://127.0.0.1:$PORT" --after 5 --duration $((ABUSE_DURATION + 20)) --each 2 $ATTACKS > "$OUT/abuse-attacks-$target-$run.txt" &
                attacker=$!
            fi
            duration=$DURATION
            if [ "$scenario" = abuse ]; then duration=$ABUSE_DURATION; fi
            args=(--url "ws://127.0.0.1:$PORT" --scenario "$measured" --pid "$SERVER_PID" --duration "$duration")
            # The Redis targets' CPU and RSS figures are those of every node
            # and the redis-server together: the whole server side.
            for pid in $EXTRA_PIDS; do args+=(--pid "$pid"); done
            if [ "$target" = cluster ]; then
                args+=(--url "ws://127.0.0.1:$((PORT + 1))")
                # Both nodes answer before the clients come.
                for _ in $(seq 100); do
                    (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + 1))") 2>/dev/null && break
                    sleep 0.05
                done
            fi
            if [ -n "$EXTRA_PIDS" ]; then redis-cli -p "$REDIS_PORT" config resetstat >/dev/null; fi
            # find-max starts low enough for the baseline to pass its first step.
            case "$scenario/$target" in
                a/exercise|f/exercise) args+=(--rate 10) ;;
                b/exercise|e/exercise) args+=(--rate 100) ;;
                a/*|f/*) args+=(--rate 1000) ;;
                b/*|e/*) args+=(--rate 10000) ;;
                g/*) args+=(--rate 5000) ;;
                h/*) args+=(--rate "${RATE_H:-26000}") ;;
                d/*) args+=(--clients "${IDLE:-5000}") ;;
            esac
            # shellcheck disable=SC2206
            args+=($EXTRA)
            log="$OUT/$scenario-$target-$run.txt"
            echo "== scenario $scenario, $target, run $run"
            timeout 600 taskset -c 1 "$BENCH" "${args[@]}" | tee "$log" || true
            if [ -n "$attacker" ]; then
                kill "$attacker" 2>/dev/null || true
                wait "$attacker" 2>/dev/null || true
                peak=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)
                echo "server peak RSS: $((peak / 1024)) MiB" | tee -a "$log"
            fi
            if [ -n "$EXTRA_PIDS" ]; then
                redis-cli -p "$REDIS_PORT" info commandstats > "$OUT/$scenario-$target-$run.commandstats"
            fi
            # shellcheck disable=SC2086
            kill "$SERVER_PID" $EXTRA_PIDS 2>/dev/null || true
            # shellcheck disable=SC2086
            wait "$SERVER_PID" $EXTRA_PIDS 2>/dev/null || true
            EXTRA_PIDS=""
        done
    done
done

echo
echo "== medians over $RUNS runs (deliveries/s, p99 ms, server us/delivery; idle: KiB per connection)"
for scenario in $SCENARIOS; do
    for target in $TARGETS; do
        python3 - "$OUT" "$scenario" "$target" "$RUNS" <<'PY'
import statistics, sys
out, scenario, target, runs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rows = []
for run in range(1, runs + 1):
    lines = open(f"{out}/{scenario}-{target}-{run}.txt").read().splitlines()
    peak = [l for l in lines if l.startswith("server peak RSS")]
    if scenario == "d":
        per = [l for l in lines if l.startswith("idle connections")]
        if per:
            rows.append((float(per[-1].split(": ")[-1].split()[0]), 0, 0, 0, 0, 0))
        continue
    if any(l.startswith("max sustainable: none") for l in lines):
        rows.append((0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
        continue
    data = [l.split() for l in lines if l.strip() and l.split()[0].replace(".", "").isdigit()]
    if not data:
        continue
    best = data[-1]
    ack = float(best[15]) if len(best) > 15 and best[15] != "-" else 0.0
    rss = float(peak[-1].split(": ")[1].split()[0]) if peak else 0.0
    rows.append((float(best[5]), float(best[8]), float(best[11]) if best[11] != "-" else 0.0, ack, float(best[0]), rss))
if not rows:
    print(f"{scenario} {target}: no result")
elif scenario == "d":
    print(f"{scenario} {target}: {statistics.median(r[0] for r in rows):.2f} KiB per idle connection")
elif statistics.median(r[0] for r in rows) == 0:
    print(f"{scenario} {target}: none sustainable (loss or dropped clients at the first step) in most runs")
else:
    extra = ""
    if scenario in ("g", "h"):
        extra = (f", {statistics.median(r[4] for r in rows):,.0f} messages/s stored, "
                 f"ack p99 {statistics.median(r[3] for r in rows):.2f} ms")
    if scenario == "abuse":
        extra = f", server peak RSS {statistics.median(r[5] for r in rows):.0f} MiB"
    print(f"{scenario} {target}: {statistics.median(r[0] for r in rows):,.0f} deliveries/s, "
          f"p99 {statistics.median(r[1] for r in rows):.2f} ms, "
          f"{statistics.median(r[2] for r in rows):.2f} us/delivery{extra}")
PY
    done
done
