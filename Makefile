# The two commands of the README: `make run` and `make test`. Each installs what a
# fresh machine lacks first (Pingora's zlib-ng build needs cmake; the dashboard's
# browser test, tests/dashboard.rs, needs Debian's chromium and chromium-driver).

CARGO ?= cargo

.PHONY: run test deps test-deps

run: deps
	$(CARGO) build --release --bins
	./target/release/ingress --config config/example.toml

test: deps test-deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	# Benches as a smoke check only: they must build and run. Under `cargo test`
	# criterion runs each bench once in its test mode, on the debug build the
	# tests share (an optimized bench build cost CI seven minutes). Timings come
	# from `cargo bench` and benches/load/run.sh, never from here.
	$(CARGO) test --bench resolve --bench control_plane --bench cold_start
	$(CARGO) test --workspace
	# The end-to-end tests (the root package's tests/*.rs only, not the unit tests)
	# again with proxy.fast_path = false: plain HTTP/1.1 requests take the fast
	# path by default, and the delegated path through pingora-proxy must keep
	# passing the same suite. About a minute more.
	INGRESS_TEST_FAST_PATH=off $(CARGO) test -p ingress --test '*'

deps:
	@command -v $(CARGO) >/dev/null 2>&1 || { echo "cargo is missing: install Rust (rustup) first" >&2; exit 1; }
	@command -v cmake >/dev/null 2>&1 || scripts/install-system-packages cmake
	@command -v curl >/dev/null 2>&1 || scripts/install-system-packages curl

# What only the tests need: `make run` does not install a browser.
test-deps:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || scripts/install-system-packages chromium chromium-driver
