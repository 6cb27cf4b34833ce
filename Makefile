# Two entry points (see README): `make demo` runs the main job on the bundled example,
# `make test` runs the whole test suite. Both install what they need first.

CARGO ?= cargo
KALKIC := target/release/kalkic
SHIM := target/release/kalki-shim
EXAMPLE := examples/smart-office
# Bounded fuzzing in the test suite (cases per property).
export KALKI_FUZZ_CASES ?= 2000

.PHONY: setup services browser build demo test lint fmt bench bench-scale bench-mqtt bench-node bench-api bench-cluster bench-cluster-load bench-dataplane soak soak-mqtt clean images

setup:
	@scripts/setup.sh

# What the integration tests run against: Open vSwitch (userspace datapath), a Docker
# engine, mosquitto with its clients (installed only: each test starts its own broker),
# libfaketime (installed only: the daylight-saving test sets the shim's wall clock), and
# etcd with etcdctl (installed only: each test starts its own cluster).
services: setup
	@scripts/ovs/start.sh
	@scripts/docker/start.sh
	@scripts/mosquitto/start.sh
	@scripts/faketime/start.sh
	@scripts/etcd/start.sh

# The headless browser of the console's end-to-end test (runtime-shim/tests/console_browser.rs):
# Debian's chromium and chromium-driver, installed only (the test starts its own driver).
browser: setup
	@scripts/chromium/start.sh

# The µmbox image kalki/umbox:0.1 (needs a Docker engine; docker/start.sh starts one).
images: setup
	@scripts/docker/start.sh
	@scripts/images.sh

build: setup
	$(CARGO) build --release --locked -p kalki-compiler -p kalki-shim

demo: build
	$(KALKIC) check $(EXAMPLE)
	$(KALKIC) verify $(EXAMPLE)
	$(KALKIC) build $(EXAMPLE) -o out/smart-office
	$(SHIM) simulate out/smart-office $(EXAMPLE)/trace.jsonl

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

test: lint services browser images
	$(CARGO) test --locked --workspace

bench: setup
	$(CARGO) bench --locked -p kalki-compiler

# Assertions over hundreds and thousands of devices, group by group and by the whole
# product side by side (compiler/benches/scale.rs); figures in docs/benchmarks.md.
bench-scale: setup
	$(CARGO) bench --locked -p kalki-compiler --bench scale

# MQTT into `kalki-shim run` on a real mosquitto, switch and engine (runtime-shim/benches/mqtt.rs):
# messages/s and publish-to-command latency; figures in docs/benchmarks.md.
bench-mqtt: setup services
	$(CARGO) bench --locked -p kalki-shim --bench mqtt

# A node of a thousand devices under each µmbox backend (runtime-shim/benches/node.rs):
# apply from empty, memory per µmbox, re-apply; figures in docs/benchmarks.md.
bench-node: setup services images
	$(CARGO) bench --locked -p kalki-shim --bench node

# Event-to-flows latency on a site on two nodes (controller, agents, 3-member etcd)
# against one node (run) (runtime-shim/benches/cluster.rs); figures in docs/benchmarks.md.
bench-cluster: setup services
	$(CARGO) bench --locked -p kalki-shim --bench cluster

# The controller's load on simulated sites of up to 100 nodes and 100,000 devices
# (runtime-shim/benches/cluster_load.rs; about 10 minutes); figures in docs/benchmarks.md.
bench-cluster-load: setup services
	$(CARGO) bench --locked -p kalki-shim --bench cluster_load

# Readings and warm posture changes through the API with wrk, journal on disk
# (runtime-shim/benches/api.rs); figures in docs/benchmarks.md.
bench-api: setup services images
	@command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y wrk
	$(CARGO) bench --locked -p kalki-shim --bench api

# TCP throughput through the switch and 0, 1, 2 inline µmboxes, against a bare veth pair
# (runtime-shim/benches/dataplane.rs); figures in docs/benchmarks.md.
bench-dataplane: setup services images
	@command -v iperf3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y iperf3
	$(CARGO) bench --locked -p kalki-shim --bench dataplane

# The same bench as a soak, outside `make test`: 5000 QoS 1 readings/s for 10 minutes, the
# shim's RSS and the journal's size sampled every 30 s; figures in docs/benchmarks.md.
soak-mqtt: setup services
	KALKI_BENCH_SOAK_S=600 KALKI_BENCH_RATE=5000 $(CARGO) bench --locked -p kalki-shim --bench mqtt

# Long runs of the randomised tests, outside CI: the verifier against the runtime engine
# (compiler/tests/engine_differential.rs) and against the brute force.
soak: setup
	KALKI_DIFF_CASES=50000 KALKI_FUZZ_CASES=4000 $(CARGO) test --locked --release -p kalki-compiler \
		--test engine_differential --test differential -- --nocapture

clean:
	$(CARGO) clean
