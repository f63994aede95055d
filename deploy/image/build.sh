#!/usr/bin/env bash
# Builds and pushes the pullbroker container image without a Docker daemon:
# the static, stripped binary (CGO_ENABLED=0, -trimpath -s -w) in one layer
# on a distroless nonroot base, put together in the registry by crane, for
# linux/amd64 and linux/arm64 under one index. The version (git describe)
# is linked into the binary (`pullbroker version`), is the image's tag, and
# is in the OCI annotations with the source and revision.
#
# Usage: deploy/image/build.sh REPOSITORY[:TAG]
#   REPOSITORY   where to push, for example registry.example.com/pullbroker
#   TAG          default: the version
# deploy/image/release.sh wraps this for a release.
#
# Environment:
#   VERSION      default: git describe --tags --match 'v[0-9]*' --dirty, or
#                v0.0.0-<commit> before the first tag.
#   BASE_IMAGE   base image; pin it by digest for a release. It can be pulled
#                through pullbroker itself, for example
#                127.0.0.1:30500/gcr.io/distroless/static-debian12:nonroot
#                (with INSECURE=1 when the proxy speaks plain HTTP).
#   PLATFORMS    comma-separated, default linux/amd64,linux/arm64. With more
#                than one, each platform's image is pushed by digest and the
#                tag names an index.
#   INSECURE=1   plain HTTP or unverified TLS for the base and target registries.
#   CRANE        crane binary; default: crane on PATH if it is $CRANE_VERSION,
#                else `go run` of that pinned version.
#   SOURCE_DATE_EPOCH  file times in the layer; default: the last commit's time.
#
# Prints the pushed reference (IMAGE@sha256:...) on stdout.
set -euo pipefail

CRANE_VERSION=v0.22.1
BASE_IMAGE=${BASE_IMAGE:-gcr.io/distroless/static-debian12:nonroot}
PLATFORMS=${PLATFORMS:-linux/amd64,linux/arm64}
SOURCE_URL=https://github.com/pullbroker/pullbroker
VERSION_PKG=github.com/pullbroker/pullbroker/internal/version
# distroless's nonroot user; the Pod specs in deploy/ run as the same uid.
IMAGE_USER=65532:65532
BIN_PATH=/usr/local/bin/pullbroker

log() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'build.sh: %s\n' "$*" >&2
	exit 1
}

[ $# -eq 1 ] || die "usage: $0 REPOSITORY[:TAG]"
IMAGE=$1
case $IMAGE in
*@*) die "the target must be a repository or a tag reference, not a digest: $IMAGE" ;;
esac

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

revision=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
if [ -z "${VERSION:-}" ]; then
	VERSION=$(git -C "$ROOT" describe --tags --match 'v[0-9]*' --dirty 2>/dev/null) ||
		VERSION=v0.0.0-${revision:0:12}
fi
[[ $VERSION =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "VERSION $VERSION is not a valid image tag"

# The repository part of IMAGE: strip a :tag that follows the last slash.
last=${IMAGE##*/}
if [[ $last == *:* ]]; then
	REPO=${IMAGE%:*}
else
	REPO=$IMAGE
	IMAGE=$IMAGE:$VERSION
fi

crane_flags=()
[ "${INSECURE:-}" = 1 ] && crane_flags+=(--insecure)

crane() {
	if [ -n "${CRANE:-}" ]; then
		"$CRANE" "$@"
	elif command -v crane >/dev/null && [ "$(command crane version 2>/dev/null)" = "$CRANE_VERSION" ]; then
		command crane "$@"
	else
		# Outside this module's settings: `go run pkg@version` rejects -mod=mod.
		env GOFLAGS= GOWORK=off go run "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" "$@"
	fi
}

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)
fi
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
oci_meta=(
	org.opencontainers.image.source="$SOURCE_URL"
	org.opencontainers.image.revision="$revision"
	org.opencontainers.image.version="$VERSION"
	org.opencontainers.image.created="$created"
)
labels=() annotations=() annotations_json=""
for kv in "${oci_meta[@]}"; do
	labels+=(-l "$kv")
	annotations+=(-a "$kv")
	# Keys and values hold no quote or backslash: VERSION is checked above.
	annotations_json+="${annotations_json:+,}\"${kv%%=*}\":\"${kv#*=}\""
done
annotations_json="{$annotations_json}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# build_layer OS ARCH[/VARIANT] DIR: the static binary, as a tarball with
# fixed owner, mode and times so that equal sources give equal layers.
build_layer() {
	local os=$1 arch=$2 dir=$3 variant=""
	if [[ $arch == */* ]]; then
		variant=${arch#*/}
		arch=${arch%%/*}
	fi
	local goarm=""
	[ "$arch" = arm ] && goarm=${variant#v}
	mkdir -p "$dir/root${BIN_PATH%/*}"
	log "go build $os/$arch${variant:+/$variant}"
	env CGO_ENABLED=0 GOOS="$os" GOARCH="$arch" GOARM="$goarm" \
		go build -trimpath -buildvcs=false -ldflags "-s -w -buildid= \
			-X $VERSION_PKG.Version=$VERSION -X $VERSION_PKG.Commit=$revision -X $VERSION_PKG.Date=$created" \
		-o "$dir/root$BIN_PATH" ./cmd/pullbroker
	chmod 0755 "$dir/root$BIN_PATH"
	tar --sort=name --format=gnu --numeric-owner --owner=0 --group=0 \
		--mtime="@$SOURCE_DATE_EPOCH" -C "$dir/root" -cf "$dir/layer.tar" "${BIN_PATH#/}"
}

IFS=, read -r -a platforms <<<"$PLATFORMS"
[ ${#platforms[@]} -gt 0 ] || die "PLATFORMS is empty"

manifests=()
for platform in "${platforms[@]}"; do
	os=${platform%%/*}
	arch=${platform#*/}
	dir=$work/${platform//\//-}
	build_layer "$os" "$arch" "$dir"
	log "crane mutate $BASE_IMAGE ($platform) -> $REPO"
	# Pushes by digest to REPO and prints REPO@sha256:... crane sets no
	# annotations while it picks the platform out of an index: the second
	# mutate adds them to the image it pushed.
	ref=$(crane mutate "${crane_flags[@]}" --platform "$platform" "$BASE_IMAGE" \
		--append "$dir/layer.tar" \
		--entrypoint "$BIN_PATH" \
		--cmd serve \
		--user "$IMAGE_USER" \
		--exposed-ports 5000/tcp,5001/tcp \
		"${labels[@]}" \
		-l org.opencontainers.image.base.name="$BASE_IMAGE" \
		--repo "$REPO")
	ref=$(crane mutate "${crane_flags[@]}" "${annotations[@]}" "$ref")
	manifests+=("$ref")
done

if [ ${#manifests[@]} -eq 1 ]; then
	crane tag "${crane_flags[@]}" "${manifests[0]}" "${IMAGE##*:}"
	digest=${manifests[0]#*@}
else
	args=()
	for m in "${manifests[@]}"; do args+=(-m "$m"); done
	log "crane index append (${#manifests[@]} platforms) -> $IMAGE"
	crane index append "${crane_flags[@]}" "${args[@]}" -t "$IMAGE" >/dev/null
	# The index carries the same annotations as its images; crane cannot
	# mutate an index's annotations, so they go into the manifest itself.
	index=$(crane manifest "${crane_flags[@]}" "$IMAGE")
	[[ $index == '{'* ]] || die "unexpected index manifest from crane: $index"
	printf '{"annotations":%s,%s' "$annotations_json" "${index#\{}" |
		crane edit manifest "${crane_flags[@]}" "$IMAGE" >/dev/null
	digest=$(crane digest "${crane_flags[@]}" "$IMAGE")
fi
echo "$REPO@$digest"
