#!/usr/bin/env bash
# Regenerates the README screenshots in Gambar/ from a real run: a server and
# three clients in tmux, captured with `capture-pane -e` and rendered to PNG.
#
#   scripts/screenshots.sh            (needs tmux, python3; installs Pillow if missing)
#
# It uses the default port 2000, like the quick start; set PORT to change it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PORT=${PORT:-2000}
SOCK=wschat-shots
OUT=Gambar
WORK=$(mktemp -d)
trap 'tmux -L "$SOCK" kill-server 2>/dev/null || true; rm -rf "$WORK"' EXIT

command -v tmux >/dev/null || { echo "error: tmux is needed" >&2; exit 1; }
python3 -c 'import PIL' 2>/dev/null || python3 -m pip install --quiet pillow
cargo build --release --bins --quiet
mkdir -p "$OUT"

t() { tmux -L "$SOCK" "$@"; }
# Waits (up to 20 s) until a window shows some text.
wait_for() {
    for _ in $(seq 200); do
        t capture-pane -p -t "shots:$1" | grep -qF -- "$2" && return 0
        sleep 0.1
    done
    echo "error: window $1 never showed: $2" >&2
    t capture-pane -p -t "shots:$1" >&2
    exit 1
}
type_in() { t send-keys -t "shots:$1" -l -- "$2"; t send-keys -t "shots:$1" Enter; }
capture() { t capture-pane -e -p -t "shots:$1" > "$WORK/$1.txt"; }

t new-session -d -s shots -x 100 -y 13 -n server \
    "cd '$ROOT' && WSCHAT_PORT=$PORT ./target/release/server; sleep 600"
wait_for server "listening on"
for nick in alice bob carol; do
    t new-window -t shots -n "$nick" \
        "cd '$ROOT' && ./target/release/client ws://127.0.0.1:$PORT --nick $nick; sleep 600"
    wait_for "$nick" "Welcome to chat"
done
wait_for alice "is now known as carol"

type_in alice "hi all, alice here"
wait_for bob "alice: hi all"
type_in bob "hey alice! carol, are you around?"
wait_for carol "bob: hey alice"
type_in carol "here! /who says:"
type_in carol "/who"
wait_for carol "3 in lobby"
type_in bob "/msg alice lunch at noon?"
wait_for alice "[private] bob: lunch"
type_in alice "sounds good"
wait_for carol "alice: sounds good"
for w in server alice bob carol; do capture "$w"; done
python3 scripts/render_terminal.py "$OUT/chat.png" 2 \
    "server=$WORK/server.txt" "client: alice=$WORK/alice.txt" \
    "client: bob=$WORK/bob.txt" "client: carol=$WORK/carol.txt"

# The server goes away: clients say so and keep retrying with backoff.
t send-keys -t shots:server C-c
wait_for alice "connection lost, reconnecting in"
type_in alice "anyone there?"
wait_for alice "reconnecting in 2s"
capture server
capture alice
python3 scripts/render_terminal.py "$OUT/server-down.png" 2 \
    "server (stopped with Ctrl+C)=$WORK/server.txt" "client: alice (server down)=$WORK/alice.txt"
echo "wrote $OUT/chat.png and $OUT/server-down.png"
