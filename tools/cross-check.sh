#!/usr/bin/env bash
# Cross-check for aarch64 (Jetson's architecture) on an x86_64 machine: cross-builds akidbd and akictl for
# aarch64-unknown-linux-gnu (release), fetches the aarch64 ONNX Runtime library through tools/setup.sh
# (AKIDB_SETUP_ARCH=aarch64), and runs both binaries under qemu-user on the default model:
#   - the emulated daemon reaches READY; `akictl status` and `akictl health` (aarch64, emulated) answer 0;
#   - it embeds texts of tests/data/minilm-sample.jsonl, and every vector has a cosine >= MIN_COSINE to the native
#     x86_64 build's vector of the same text (run here, in this script) and to sentence-transformers' reference in
#     the fixture. By default the fixture's texts under 128 words (1 to ~240 tokens) and its first two longer
#     ones (truncated at the model's 256 tokens): emulated embedding is ~100x slower than native and the long
#     texts are most of its time. CROSS_CHECK_TEXTS=all embeds all 38 (5-7 minutes emulated);
#   - SIGTERM stops it with exit 0 and the socket removed.
# Prints the figures and writes them to target/cross-check.json. Installs what is missing (the rustup target; the
# Debian packages gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu, qemu-user-static). Needs root: ONNX Runtime's CPU
# detection crashes on the host's x86 /proc/cpuinfo under qemu-user, so the emulated daemon runs in a private
# mount namespace where an aarch64 cpuinfo is bind-mounted over /proc/cpuinfo (unshare -m).
# Every step that cannot run fails the script; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
started_at=$(date +%s.%N)

TARGET=aarch64-unknown-linux-gnu
MIN_COSINE=${MIN_COSINE:-0.9999}
READY_TIMEOUT_S=${READY_TIMEOUT_S:-180}
FIXTURE=tests/data/minilm-sample.jsonl
CROSS_CHECK_TEXTS=${CROSS_CHECK_TEXTS:-short-and-two-long}
MODEL_DIR=models/all-MiniLM-L6-v2
ARM_ORT_DIR=target/cross/aarch64/onnxruntime
ARM_ORT_LIB=$ARM_ORT_DIR/libonnxruntime.so.1.32.0
X86_ORT_LIB=target/onnxruntime/libonnxruntime.so.1.32.0
ARM_BIN=target/$TARGET/release
OUT_JSON=target/cross-check.json
QEMU=(qemu-aarch64-static -cpu neoverse-n1 -L /usr/aarch64-linux-gnu)

die() { echo "cross-check: FAILED: $*" >&2; exit 1; }
step() { echo "cross-check: $*"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

[ "$(uname -m)" = x86_64 ] || die "this check emulates aarch64 on an x86_64 host; on aarch64 run \`make test\` natively"
[ "$(id -u)" = 0 ] || die "needs root (unshare -m and a bind mount over /proc/cpuinfo for the emulated daemon)"
command -v python3 >/dev/null || die "python3 is needed (cosines, JSON)"

# --- What it needs, installed only when missing. -------------------------------------------------------------------
if ! rustup target list --installed | grep -qx "$TARGET"; then
  step "rustup target add $TARGET"
  rustup target add "$TARGET" || die "rustup target add $TARGET"
fi
missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
if [ ${#missing[@]} -gt 0 ]; then
  step "apt-get install ${missing[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; } \
    || die "could not install ${missing[*]}"
fi
[ -d /usr/aarch64-linux-gnu/lib ] || die "/usr/aarch64-linux-gnu/lib is missing (libc6-arm64-cross, pulled by gcc-aarch64-linux-gnu)"

# --- Runtime files: the x86_64 ones (make setup) and the aarch64 library through the same setup code. --------------
tools/setup.sh >/dev/null || die "tools/setup.sh (x86_64)"
AKIDB_SETUP_ARCH=aarch64 AKIDB_SETUP_ORT_DIR=$ARM_ORT_DIR tools/setup.sh >/dev/null || die "tools/setup.sh (AKIDB_SETUP_ARCH=aarch64)"
[ -f "$ARM_ORT_LIB" ] && [ -f "$X86_ORT_LIB" ] && [ -f "$MODEL_DIR/model.onnx" ] || die "setup did not place the libraries and the model"
# The choice by `uname -m` itself: with a uname that says aarch64, setup must find the aarch64 library in place
# (its sha256 is the aarch64 pin; a wrong choice would fetch the x86_64 one over it).
fake_bin=$(mktemp -d /tmp/akidb-uname.XXXXXX)
printf '#!/bin/sh\n[ "$1" = -m ] && echo aarch64 && exit 0\nexec /bin/uname "$@"\n' > "$fake_bin/uname"
chmod +x "$fake_bin/uname"
PATH="$fake_bin:$PATH" AKIDB_SETUP_ORT_DIR=$ARM_ORT_DIR tools/setup.sh >/dev/null || die "tools/setup.sh with uname -m = aarch64"
rm -rf "$fake_bin"
readelf -h "$ARM_ORT_LIB" | grep -q AArch64 || die "$ARM_ORT_LIB is not an aarch64 library"
step "tools/setup.sh: aarch64 library by AKIDB_SETUP_ARCH and by uname -m: $ARM_ORT_LIB"

# --- Builds. -------------------------------------------------------------------------------------------------------
build_started=$(now)
step "cargo build --release --bins --target $TARGET"
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ \
AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
  cargo build --quiet --release --bins --target "$TARGET" || die "aarch64 cross-build"
step "cargo build --release --bins (x86_64, the vectors to compare with)"
cargo build --quiet --release --bins || die "x86_64 build"
build_s=$(since "$build_started")
for bin in akidbd akictl; do
  file -L "$ARM_BIN/$bin" 2>/dev/null | grep -q "ARM aarch64" || { readelf -h "$ARM_BIN/$bin" | grep -q AArch64; } \
    || die "$ARM_BIN/$bin is not an aarch64 executable"
done

work=$(mktemp -d /tmp/akidb-cross.XXXXXX)
daemon_pid=
cleanup() {
  if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then kill -KILL "$daemon_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# An aarch64 /proc/cpuinfo (Neoverse N1, the CPU qemu emulates) for ONNX Runtime's CPU detection.
{
  for cpu in 0 1; do
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\n' "$cpu"
    printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n'
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n'
  done
} > "$work/cpuinfo"
python3 - "$FIXTURE" "$CROSS_CHECK_TEXTS" "$work/fixture.jsonl" "$work/texts.txt" <<'PY'
import json, sys
fixture, which, out_fixture, out_texts = sys.argv[1:5]
if which not in ("all", "short-and-two-long"):
    sys.exit(f"cross-check: CROSS_CHECK_TEXTS is 'all' or 'short-and-two-long', not {which!r}")
chosen, long_taken = [], 0
for line in open(fixture):
    text = json.loads(line)["text"]
    assert "\n" not in text, "fixture texts are one line each"
    if which == "all" or len(text.split()) < 128:
        chosen.append(line)
    elif long_taken < 2:
        chosen.append(line)
        long_taken += 1
with open(out_fixture, "w") as f:
    f.writelines(chosen)
with open(out_texts, "w") as f:
    f.writelines(json.loads(line)["text"] + "\n" for line in chosen)
PY
n_texts=$(wc -l < "$work/texts.txt")
[ "$n_texts" -ge 1 ] || die "no texts in $FIXTURE"

# run_ctl ARCH ARGS...: akictl of that architecture (aarch64: emulated).
run_ctl() {
  local arch=$1; shift
  if [ "$arch" = aarch64 ]; then "${QEMU[@]}" "$ARM_BIN/akictl" "$@"; else target/release/akictl "$@"; fi
}

# serve ARCH: starts that architecture's daemon, waits for READY, checks status/health, embeds the fixture texts
# into $work/ARCH.jsonl, stops it with SIGTERM and checks the exit. Sets ready_s and embed_s.
serve() {
  local arch=$1 socket="$work/$1.sock" config="$work/$1.toml" log="$work/$1.log" lib bin
  if [ "$arch" = aarch64 ]; then lib=$ARM_ORT_LIB; bin=$ARM_BIN/akidbd; else lib=$X86_ORT_LIB; bin=target/release/akidbd; fi
  # One warm-up shape: the default's after-READY shapes (up to 256 tokens x 8) cost 3,584 emulated tokens, 44%
  # as much again as the fixture itself, and would compete with it. ORT's threads sleep instead of spinning: an
  # emulated spin loop burns the host cores the other emulated thread needs.
  printf '[model]\ndir = "%s"\n[ort]\nlibrary_path = "%s"\n[batcher]\nwarmup_seq_lengths = [16]\n[[devices]]\nep = "cpu"\nspin = false\n' \
    "$PWD/$MODEL_DIR" "$PWD/$lib" > "$config"
  local t0; t0=$(now)
  if [ "$arch" = aarch64 ]; then
    # unshare without --fork execs sh, which execs qemu: $! is the emulated daemon's process, so SIGTERM reaches it.
    unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$work/cpuinfo" "${QEMU[@]}" \
      "$bin" --config "$config" --socket "$socket" > "$log" 2>&1 &
  else
    "$bin" --config "$config" --socket "$socket" > "$log" 2>&1 &
  fi
  daemon_pid=$!
  local deadline=$(( $(date +%s) + READY_TIMEOUT_S ))
  until [ -S "$socket" ] && run_ctl "$arch" --socket "$socket" health 2>/dev/null; do
    kill -0 "$daemon_pid" 2>/dev/null || { cat "$log" >&2; die "$arch daemon exited before READY"; }
    [ "$(date +%s)" -lt "$deadline" ] || { cat "$log" >&2; die "$arch daemon not READY within ${READY_TIMEOUT_S}s"; }
    sleep 0.5
  done
  ready_s=$(since "$t0")
  step "$arch: READY after ${ready_s}s"
  run_ctl "$arch" --socket "$socket" status > "$work/$arch.status" || { cat "$work/$arch.status"; die "$arch: akictl status did not exit 0"; }
  grep -q . "$work/$arch.status" || die "$arch: akictl status printed nothing"
  run_ctl "$arch" --socket "$socket" health || die "$arch: akictl health did not exit 0"
  t0=$(now)
  run_ctl "$arch" --socket "$socket" embed --no-cache --batch 8 < "$work/texts.txt" > "$work/$arch.jsonl" \
    || { cat "$log" >&2; die "$arch: akictl embed failed"; }
  embed_s=$(since "$t0")
  step "$arch: embedded $n_texts texts in ${embed_s}s"
  kill -TERM "$daemon_pid"
  local code=0
  wait "$daemon_pid" || code=$?
  daemon_pid=
  [ "$code" = 0 ] || { cat "$log" >&2; die "$arch daemon exited $code after SIGTERM (expected 0)"; }
  [ ! -e "$socket" ] || die "$arch daemon left its socket $socket behind"
  step "$arch: SIGTERM -> exit 0, socket removed"
}

# The doctor's library probe (C API through dlopen) on aarch64: the library's version and providers.
probe=$(unshare -m sh -c 'mount --bind "$0" /proc/cpuinfo && exec "$@"' "$work/cpuinfo" "${QEMU[@]}" \
  "$ARM_BIN/akidbd" --probe-ort-library "$PWD/$ARM_ORT_LIB") || die "akidbd --probe-ort-library (aarch64) failed"
step "aarch64: akidbd --probe-ort-library: $probe"
case "$probe" in *'"version":"1.32.0"'*CPUExecutionProvider*) ;; *) die "unexpected probe answer: $probe" ;; esac

serve aarch64
arm_ready_s=$ready_s; arm_embed_s=$embed_s
serve x86_64
x86_ready_s=$ready_s; x86_embed_s=$embed_s

total_s=$(since "$started_at")
python3 - "$work/fixture.jsonl" "$work/aarch64.jsonl" "$work/x86_64.jsonl" "$OUT_JSON" "$MIN_COSINE" \
  "$arm_ready_s" "$arm_embed_s" "$x86_ready_s" "$x86_embed_s" "$build_s" "$total_s" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" \
  "$(qemu-aarch64-static --version | head -1)" "$CROSS_CHECK_TEXTS" <<'PY'
import json, math, sys
fixture, arm_path, x86_path, out_path = sys.argv[1:5]
min_cos = float(sys.argv[5])
arm_ready, arm_embed, x86_ready, x86_embed, build_s, total_s = map(float, sys.argv[6:12])
host_cpu, qemu, selection = sys.argv[12:15]
ref = [json.loads(line) for line in open(fixture)]
arm = [json.loads(line) for line in open(arm_path)]
x86 = [json.loads(line) for line in open(x86_path)]
if not (len(ref) == len(arm) == len(x86)):
    sys.exit(f"cross-check: FAILED: {len(ref)} texts, {len(arm)} aarch64 vectors, {len(x86)} x86_64 vectors")
def cos(a, b):
    if len(a) != len(b):
        return float("nan")
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
for r, a, x in zip(ref, arm, x86):
    if not (r["text"] == a["text"] == x["text"]):
        sys.exit(f"cross-check: FAILED: text order differs at fixture index {r['index']}")
arm_x86 = min(cos(a["embedding"], x["embedding"]) for a, x in zip(arm, x86))
arm_ref = min(cos(a["embedding"], r["embedding"]) for a, r in zip(arm, ref))
x86_ref = min(cos(x["embedding"], r["embedding"]) for x, r in zip(x86, ref))
max_abs = max(abs(p - q) for a, x in zip(arm, x86) for p, q in zip(a["embedding"], x["embedding"]))
figures = {
    "target": "aarch64-unknown-linux-gnu",
    "emulator": qemu + " -cpu neoverse-n1",
    "host_cpu": host_cpu,
    "texts": len(ref),
    "text_selection": selection,
    "min_cosine_aarch64_vs_x86_64": arm_x86,
    "min_cosine_aarch64_vs_sentence_transformers": arm_ref,
    "min_cosine_x86_64_vs_sentence_transformers": x86_ref,
    "max_abs_diff_aarch64_vs_x86_64": max_abs,
    "threshold": min_cos,
    "aarch64_emulated_ready_s": arm_ready,
    "aarch64_emulated_embed_s": arm_embed,
    "x86_64_native_ready_s": x86_ready,
    "x86_64_native_embed_s": x86_embed,
    "build_s": build_s,
    "total_s": total_s,
}
ok = all(not math.isnan(c) and c >= min_cos for c in (arm_x86, arm_ref, x86_ref))
figures["passed"] = ok
with open(out_path, "w") as out:
    json.dump(figures, out, indent=2)
    out.write("\n")
print(f"cross-check: {len(ref)} texts; min cosine aarch64 vs x86_64 {arm_x86:.7f} (max |diff| {max_abs:.2e}), "
      f"aarch64 vs sentence-transformers {arm_ref:.7f}, x86_64 vs sentence-transformers {x86_ref:.7f} (need >= {min_cos})")
print(f"cross-check: emulated aarch64 ({qemu.split(',')[0]}, host {host_cpu}): READY {arm_ready:.1f}s, "
      f"{len(ref)} texts {arm_embed:.1f}s; native x86_64: READY {x86_ready:.1f}s, {x86_embed:.1f}s; "
      f"builds {build_s:.0f}s; total {total_s:.0f}s -> {out_path}")
print("cross-check:", "1 passed, 0 failed" if ok else "0 passed, 1 failed")
sys.exit(0 if ok else 1)
PY
