#!/usr/bin/env bash
# The one command that runs the whole test suite, locally and in CI.
#
# It installs the test tools, checks formatting and vet, fetches and compiles everything while the
# network is still there, then runs `go test -race` inside a loopback-only network namespace so
# that no test can reach anything off this machine.
#
# Usage: scripts/test.sh [--no-envtest] [go test packages...]
#   --no-envtest  quick local run: do not build etcd/kube-apiserver, and let tests whose tools
#                 are absent skip instead of fail.
#   packages      default ./...
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/test-deps.sh
source scripts/lib/test-deps.sh

log() { printf '==> %s\n' "$*" >&2; }

# Tests reach at most this far; CI's limit for the whole run is 90 min.
GO_TEST_TIMEOUT=40m

envtest=1
if [ "${1:-}" = --no-envtest ]; then
	envtest=0
	shift
fi
packages=("$@")
[ ${#packages[@]} -gt 0 ] || packages=(./...)

install_deps() {
	if [ "$envtest" = 1 ]; then
		scripts/install-test-deps.sh
	else
		scripts/install-test-deps.sh --no-envtest
	fi
}

check_format() {
	local unformatted
	unformatted=$(gofmt -l .)
	if [ -n "$unformatted" ]; then
		log "gofmt would change these files:"
		echo "$unformatted" >&2
		return 1
	fi
}

# prepare_offline: everything that needs the network or heavy compiling, done before the
# namespace. Compiling the race-instrumented test binaries here fills the build cache, so the
# go test inside only links.
prepare_offline() {
	log "go mod download"
	go mod download
	log "go vet ${packages[*]}"
	go vet "${packages[@]}"
	log "gofmt -l ."
	check_format
	log "compiling test binaries (-race)"
	local bins
	bins=$(mktemp -d)
	go test -race -c -o "$bins/" "${packages[@]}" >/dev/null
	rm -rf "$bins"
}

# The script run inside the namespace. 127.0.0.2 is checked because tests use it as a second
# host (a blob CDN that must never see credentials): Linux routes all of 127/8 to lo.
read -r -d '' IN_NAMESPACE <<'EOF' || true
set -euo pipefail
ip link set lo up
if ! ip route get 127.0.0.2 | grep -q '^local 127.0.0.2 dev lo'; then
	echo "127.0.0.2 is not routed to lo in the test namespace" >&2
	exit 1
fi
# Every aws-sdk-go session made while AWS_CA_BUNDLE is set rewrites http.DefaultClient's transport,
# a data race between tests that open S3 drivers; the tests reach only plain-HTTP loopback servers.
unset AWS_CA_BUNDLE
exec go test -race -count=1 -timeout "$GO_TEST_TIMEOUT" "$@"
EOF

run_tests() {
	local ns=(unshare -n) require=(PULLBROKER_REQUIRE_TOOLS=1)
	# Unset, not empty, is what lets a test skip when its tool is missing.
	[ "$envtest" = 1 ] || require=(-u PULLBROKER_REQUIRE_TOOLS)
	if [ "$(id -u)" -ne 0 ]; then
		# Unprivileged fallback for local runs; tests that need root (containerd) will fail.
		log "not root: using a user namespace as well"
		ns=(unshare -r -n)
	fi
	log "go test ${packages[*]} (loopback-only network namespace)"
	# env's -u must come before any NAME=VALUE, hence require first.
	env "${require[@]}" \
		GOFLAGS=-mod=mod \
		GOPROXY=off \
		GO_TEST_TIMEOUT="$GO_TEST_TIMEOUT" \
		PULLBROKER_TEST_TOOLS="$TOOLS_DIR" \
		KUBEBUILDER_ASSETS="$KUBE_ASSETS_DIR" \
		PATH="$TOOLS_DIR:$KUBE_ASSETS_DIR:$(go env GOROOT)/bin:$PATH" \
		"${ns[@]}" bash -c "$IN_NAMESPACE" bash "${packages[@]}"
}

# Fuzz targets, each for a few seconds on top of its seed corpus (which every go test runs). A
# longer run by hand: go test ./PKG -run '^$' -fuzz TARGET -fuzztime 10m
FUZZ_TARGETS=(
	"./proxy FuzzParseRoute"
	"./cache FuzzManifestLinks"
	"./rewrite FuzzRewrite"
)
FUZZ_TIME=10s

run_fuzz() {
	local target pkg name
	for target in "${FUZZ_TARGETS[@]}"; do
		read -r pkg name <<<"$target"
		log "fuzz $name ($pkg, $FUZZ_TIME)"
		go test -run '^$' -fuzz "^$name\$" -fuzztime "$FUZZ_TIME" "$pkg"
	done
}

install_deps
prepare_offline
run_tests
# Only with the whole suite: a run of some packages is someone's quick check.
if [ "${packages[*]}" = ./... ]; then
	run_fuzz
fi
