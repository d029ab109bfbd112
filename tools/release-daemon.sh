# Sourced by tools/soak.sh and tools/overload.sh: builds the release binaries, starts akidbd on a socket in a
# temporary directory with the [server] socket plus DAEMON_CONFIG (TOML, printf %b escapes) as its configuration
# (and DAEMON_ENV, e.g. "env MALLOC_ARENA_MAX=2", in front of it), waits until it answers, and defines
# `ctl` (akictl on that socket), `rss` (its RSS in KiB) and `fds` (its open descriptors). Sets $work, $sock, $pid;
# the daemon is killed and $work removed on exit (add to the trap with `on_exit`).
tools/setup.sh
cargo build --release --bins --quiet
work=$(mktemp -d)
exit_hooks='kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"'
on_exit() { exit_hooks="$1; $exit_hooks"; trap "$exit_hooks" EXIT; }
trap "$exit_hooks" EXIT
sock="$work/embed.sock"
printf '[server]\nsocket = "%s"\n%b' "$sock" "${DAEMON_CONFIG:-}" > "$work/akidb.toml"
${DAEMON_ENV:-} target/release/akidbd --config "$work/akidb.toml" 2> "$work/daemon.log" &
pid=$!
for _ in $(seq 1 300); do target/release/akictl --socket "$sock" health 2>/dev/null && break; sleep 0.1; done
ctl() { target/release/akictl --socket "$sock" "$@"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
fds() { ls "/proc/$pid/fd" | wc -l; }
