#!/usr/bin/env bash
# Installs every tool the test suite runs against: Debian packages (upstream registry, real
# clients, namespace tools), pinned Go tools built from the Go module proxy and Azurite from npm
# (nothing else is reachable from CI, so nothing here downloads a prebuilt binary). Azurite needs
# node 20 or later and npm on the machine.
#
# Idempotent: apt runs only when a package is missing, and each Go or npm tool is installed once
# into $HOME/.cache/pullbroker-test/<tool>-<version>/ and skipped when that folder exists.
#
# Usage: scripts/install-test-deps.sh [--no-envtest]
#   --no-envtest  skip etcd, kube-apiserver and kubelet (kube-apiserver takes ~11 min and 2.8 GB);
#                 for quick local runs only, the full suite needs them.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/test-deps.sh
source scripts/lib/test-deps.sh

APT_PACKAGES=(docker-registry apache2-utils skopeo containerd runc iproute2 util-linux podman)

log() { printf '==> %s\n' "$*" >&2; }

as_root() {
	if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

install_apt() {
	local missing=() p
	for p in "${APT_PACKAGES[@]}"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	if [ ${#missing[@]} -eq 0 ]; then
		log "apt packages: all present"
		return
	fi
	log "apt packages: installing ${missing[*]}"
	local start=$SECONDS
	# apt's progress is long and useless in CI; it is shown only when something fails.
	local aptlog=$TEST_CACHE/apt.log
	if ! {
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
			as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
	} >"$aptlog" 2>&1; then
		cat "$aptlog" >&2
		return 1
	fi
	log "apt packages: installed in $((SECONDS - start))s"
}

# go_env CMD...: runs a go command for a tool build with fixed settings, so the caller's GOFLAGS or
# go.work cannot change what gets built, and no toolchain download is tried (the proxy serves
# modules, not toolchains).
go_env() {
	env GOFLAGS=-buildvcs=false GOWORK=off GOTOOLCHAIN=local GO111MODULE=on "$@"
}

# publish TMPDIR DIR START: moves a finished build into its versioned folder in one rename, so an
# interrupted build never leaves a folder that a later run would take as cached. Logs the build
# time (since $SECONDS was START) so cold-install costs stay visible in CI.
publish() {
	rm -rf "$2"
	chmod 755 "$1"
	mv -T "$1" "$2"
	log "$(basename "$2"): built in $((SECONDS - $3))s"
}

# go_install DIR BINARY PKG@VERSION: `go install` of a command into its versioned folder, once.
go_install() {
	local dir=$1 bin=$2 pkg=$3
	if [ -x "$dir/$bin" ]; then
		log "$bin: cached in $dir"
		return
	fi
	log "$bin: building $pkg"
	local tmp start=$SECONDS
	tmp=$(mktemp -d "$dir.partial.XXXXXX")
	(cd "$tmp" && go_env GOBIN="$tmp" go install "$pkg")
	publish "$tmp" "$dir" "$start"
}

# install_azurite: Azurite, Microsoft's Azure Storage emulator (the Azure blob server of the
# object-storage tests), pinned from npm, once. About 1 min cold.
install_azurite() {
	local bin=node_modules/.bin/azurite-blob
	if [ -x "$AZURITE_DIR/$bin" ]; then
		log "azurite: cached in $AZURITE_DIR"
		return
	fi
	local node_major
	node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
	if ! command -v npm >/dev/null || [ "$node_major" -lt 20 ]; then
		log "azurite: needs node 20 or later and npm (found node major version $node_major)"
		exit 1
	fi
	log "azurite: installing azurite@$AZURITE_VERSION"
	local tmp start=$SECONDS
	tmp=$(mktemp -d "$AZURITE_DIR.partial.XXXXXX")
	# The bin links npm writes are relative, so the folder can be moved into place.
	npm install --prefix "$tmp" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2
	[ -x "$tmp/$bin" ] || {
		log "azurite: npm installed no $bin"
		exit 1
	}
	publish "$tmp" "$AZURITE_DIR" "$start"
}

# new_tool_module NAME: a throwaway module in a temp dir, for tools that `go install` refuses
# (etcd and kubernetes carry replace directives). Prints its path.
new_tool_module() {
	local mod
	mod=$(mktemp -d "${TMPDIR:-/tmp}/pullbroker-$1.XXXXXX")
	(cd "$mod" && go_env go mod init "pullbroker.test/build/$1" >/dev/null 2>&1)
	echo "$mod"
}

# write_tools_go DIR IMPORT: pins IMPORT as a dependency without compiling it into anything.
write_tools_go() {
	cat >"$1/tools.go" <<EOF
//go:build tools

package tools

import _ "$2"
EOF
}

build_etcd() {
	if [ -x "$ETCD_DIR/etcd" ]; then
		log "etcd: cached in $ETCD_DIR"
		return
	fi
	log "etcd: building $ETCD_VERSION"
	local mod tmp start=$SECONDS
	mod=$(new_tool_module etcd)
	tmp=$(mktemp -d "$ETCD_DIR.partial.XXXXXX")
	write_tools_go "$mod" go.etcd.io/etcd/server/v3
	(
		cd "$mod"
		go_env go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
		go_env go mod tidy
		go_env go build -o "$tmp/etcd" go.etcd.io/etcd/server/v3
	)
	publish "$tmp" "$ETCD_DIR" "$start"
	rm -rf "$mod"
}

# kube_staging_modules GOMOD: the k8s.io/* modules that kubernetes's go.mod replaces with its own
# ./staging tree. Read from the pinned go.mod rather than listed here, so a version bump cannot
# leave one out.
kube_staging_modules() {
	sed -n 's|^[[:space:]]*\(k8s\.io/[^[:space:]]*\)[[:space:]]*=>[[:space:]]*\./staging/.*|\1|p' "$1"
}

# build_kube_command NAME DIR LDFLAGS: builds k8s.io/kubernetes/cmd/NAME at $KUBE_VERSION into DIR,
# once. kubernetes cannot be `go install`ed (its go.mod replaces the staging modules with ./staging),
# so a throwaway module requires it and maps each staging module to its published version. The
# kubelet and kube-apiserver share nearly all packages: whichever builds second takes about 2 min.
build_kube_command() {
	local name=$1 dir=$2 ldflags=$3
	if [ -x "$dir/$name" ]; then
		log "$name: cached in $dir"
		return
	fi
	log "$name: building $KUBE_VERSION"
	# Staging modules are published as v0.X.Y for kubernetes v1.X.Y.
	local staging_version=v0.${KUBE_VERSION#v1.}
	local mod tmp gomod m start=$SECONDS
	mod=$(new_tool_module "$name")
	tmp=$(mktemp -d "$dir.partial.XXXXXX")
	write_tools_go "$mod" "k8s.io/kubernetes/cmd/$name"
	(
		cd "$mod"
		gomod=$(go_env go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" |
			sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')
		[ -f "$gomod" ] || {
			log "$name: cannot find go.mod of k8s.io/kubernetes@$KUBE_VERSION"
			exit 1
		}
		go_env go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
		for m in $(kube_staging_modules "$gomod"); do
			go_env go mod edit -replace="$m=$m@$staging_version"
		done
		go_env go mod tidy
		go_env go build -ldflags "$ldflags" -o "$tmp/$name" "k8s.io/kubernetes/cmd/$name"
	)
	publish "$tmp" "$dir" "$start"
	rm -rf "$mod"
}

# About 11 min and 2.8 GB cold.
build_kube_apiserver() {
	build_kube_command kube-apiserver "$KUBE_APISERVER_DIR" "-s -w"
}

# About 2 min after kube-apiserver. Built without the version stamp it reports v0.0.0-master, which
# the API server would record as the node's kubeletVersion: stamp the real one.
build_kubelet() {
	local minor=${KUBE_VERSION#v1.}
	minor=${minor%%.*}
	local v=k8s.io/component-base/version
	build_kube_command kubelet "$KUBELET_DIR" \
		"-s -w -X $v.gitVersion=$KUBE_VERSION -X $v.gitMajor=1 -X $v.gitMinor=$minor -X $v.gitTreeState=clean"
}

# link_into DIR FILE...: the folders handed to tests hold symlinks into the versioned folders,
# refreshed every run so a version bump takes effect without cleaning anything.
link_into() {
	local dir=$1 f
	shift
	mkdir -p "$dir"
	for f in "$@"; do
		[ -x "$f" ] && ln -sfn "$f" "$dir/$(basename "$f")"
	done
	return 0
}

summary() {
	cat >&2 <<EOF

Test tools:
  docker-registry  $(command -v docker-registry || echo MISSING)
  htpasswd         $(command -v htpasswd || echo MISSING)
  skopeo           $(command -v skopeo || echo MISSING)
  containerd       $(command -v containerd || echo MISSING)
  ctr              $(command -v ctr || echo MISSING)
  podman           $(command -v podman || echo MISSING)
  crane            $CRANE_DIR/crane
  conformance      $CONFORMANCE_DIR/conformance
  versitygw        $VERSITYGW_DIR/versitygw
  fake-gcs-server  $FAKE_GCS_SERVER_DIR/fake-gcs-server
  azurite-blob     $AZURITE_DIR/node_modules/.bin/azurite-blob
  etcd             $([ -x "$ETCD_DIR/etcd" ] && echo "$ETCD_DIR/etcd" || echo "not built (--no-envtest)")
  kube-apiserver   $([ -x "$KUBE_APISERVER_DIR/kube-apiserver" ] && echo "$KUBE_APISERVER_DIR/kube-apiserver" || echo "not built (--no-envtest)")
  kubelet          $([ -x "$KUBELET_DIR/kubelet" ] && echo "$KUBELET_DIR/kubelet" || echo "not built (--no-envtest)")
  runc             $(command -v runc || echo MISSING)
Environment for tests:
  PULLBROKER_TEST_TOOLS=$TOOLS_DIR
  KUBEBUILDER_ASSETS=$KUBE_ASSETS_DIR
EOF
}

main() {
	local envtest=1
	case "${1:-}" in
	--no-envtest) envtest=0 ;;
	"") ;;
	*)
		echo "usage: $0 [--no-envtest]" >&2
		exit 2
		;;
	esac
	mkdir -p "$TEST_CACHE"
	# One install at a time: a second run waits here, then finds everything cached.
	exec 9>"$TEST_CACHE/.install.lock"
	if ! flock -n 9; then
		log "another install is running; waiting for it"
		flock 9
	fi
	# Leftovers of an interrupted build; never mistaken for a cache, but they take space.
	rm -rf "$TEST_CACHE"/*.partial.*
	install_apt
	go_install "$CRANE_DIR" crane "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"
	go_install "$CONFORMANCE_DIR" conformance \
		"github.com/opencontainers/distribution-spec/conformance@$CONFORMANCE_VERSION"
	# The S3 server behind the object-storage tests; about 2.5 min cold.
	go_install "$VERSITYGW_DIR" versitygw "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
	# The GCS server; about 1 min cold.
	go_install "$FAKE_GCS_SERVER_DIR" fake-gcs-server "github.com/fsouza/fake-gcs-server@$FAKE_GCS_SERVER_VERSION"
	install_azurite
	if [ "$envtest" = 1 ]; then
		build_etcd
		build_kube_apiserver
		build_kubelet
	fi
	link_into "$TOOLS_DIR" "$CRANE_DIR/crane" "$CONFORMANCE_DIR/conformance" "$VERSITYGW_DIR/versitygw" \
		"$FAKE_GCS_SERVER_DIR/fake-gcs-server" "$AZURITE_DIR/node_modules/.bin/azurite-blob"
	link_into "$KUBE_ASSETS_DIR" "$ETCD_DIR/etcd" "$KUBE_APISERVER_DIR/kube-apiserver" "$KUBELET_DIR/kubelet"
	summary
}

main "$@"
