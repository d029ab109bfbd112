SHELL := /bin/bash
# akidb: the two Quick-start commands are `make run` and `make test`.
CARGO ?= cargo
CONFIG ?= config/akidb.toml
# The integration tests need the test-only fault hooks compiled into akidbd.
TEST_FEATURES = --features fault-injection

.PHONY: setup build run test lint fmt bench soak overload fuzz install verify-units cross-check clean-setup

setup:
	@tools/setup.sh

build: setup
	$(CARGO) build --release --bins

run: build
	$(CARGO) run --release --bin akidbd -- --config $(CONFIG)

test: setup
	$(CARGO) test $(TEST_FEATURES) --all-targets 2>&1 | tee target/test.log; test $${PIPESTATUS[0]} -eq 0
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(TEST_FEATURES) --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Every benchmark, then one artifact with all their figures: target/bench.json (what the README quotes).
bench: setup
	tools/default-model/options.sh
	$(CARGO) bench --bench engine
	$(CARGO) bench --bench daemon
	$(CARGO) bench --bench latency
	$(CARGO) bench --bench models
	python3 tools/bench-report.py

# Each fuzz target for FUZZ_SECS seconds (cargo-fuzz on the stable toolchain via RUSTC_BOOTSTRAP).
FUZZ_SECS ?= 300
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	for target in frame request; do \
	  RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --fuzz-dir tools/fuzz -O $$target -- -max_total_time=$(FUZZ_SECS) -max_len=8192 || exit 1; \
	done

soak:
	SOAK_SECS=$${SOAK_SECS:-600} tools/soak.sh

# 5x the measured capacity, open loop, for OVERLOAD_SECS (default 60): goodput, reply codes, RSS.
overload:
	tools/overload.sh

# aarch64 (Jetson's architecture) on x86_64: cross-build, run under qemu-user on the default model, compare with the
# native build and sentence-transformers; figures in target/cross-check.json. Needs root (see the script).
cross-check:
	tools/cross-check.sh

install:
	tools/install.sh

verify-units:
	tools/verify-units.sh

clean-setup:
	rm -rf target/onnxruntime target/setup models/all-MiniLM-L6-v2
