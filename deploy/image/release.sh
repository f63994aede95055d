#!/usr/bin/env bash
# Builds the release image for linux/amd64 and linux/arm64 and pushes it to
# REGISTRY/pullbroker:VERSION, the tag that the kustomize manifests and the
# Helm chart (appVersion) name by default.
#
# Usage: deploy/image/release.sh REGISTRY
#   REGISTRY     for example ghcr.io/pullbroker or 127.0.0.1:5000
#
# Environment:
#   VERSION      default: the v* tag at HEAD (git describe --exact-match).
#                It must equal appVersion in deploy/helm/pullbroker/Chart.yaml:
#                bump that (and the kustomize newTag lines) first.
#   BASE_IMAGE, INSECURE, CRANE, SOURCE_DATE_EPOCH: as for build.sh.
#
# Prints the pushed reference (REGISTRY/pullbroker@sha256:...) on stdout.
set -euo pipefail

die() {
	printf 'release.sh: %s\n' "$*" >&2
	exit 1
}

[ $# -eq 1 ] || die "usage: $0 REGISTRY (for example ghcr.io/pullbroker)"
REGISTRY=${1%/}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if [ -z "${VERSION:-}" ]; then
	VERSION=$(git -C "$ROOT" describe --tags --match 'v[0-9]*' --exact-match 2>/dev/null) ||
		die "HEAD has no v* tag: tag the release commit, or set VERSION"
fi
chart_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' "$ROOT/deploy/helm/pullbroker/Chart.yaml")
[ "$VERSION" = "$chart_version" ] ||
	die "VERSION $VERSION differs from appVersion $chart_version in deploy/helm/pullbroker/Chart.yaml: bump the chart and the kustomize newTag lines first"

VERSION=$VERSION PLATFORMS=linux/amd64,linux/arm64 \
	exec "$ROOT/deploy/image/build.sh" "$REGISTRY/pullbroker:$VERSION"
