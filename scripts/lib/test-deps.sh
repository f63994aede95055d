# shellcheck shell=bash
# Pinned versions and cache paths of the test tools. Sourced by install-test-deps.sh and test.sh so
# that both agree on where each tool lives. Bump a version here: the new one builds into a new
# folder and the old folder is simply no longer used.

CRANE_VERSION=v0.22.1
CONFORMANCE_VERSION=v0.0.0-20260831232431-97274622c111
ETCD_VERSION=v3.6.16
KUBE_VERSION=v1.37.2
VERSITYGW_VERSION=v1.8.0
FAKE_GCS_SERVER_VERSION=v1.56.1
AZURITE_VERSION=3.37.0

TEST_CACHE=${PULLBROKER_TEST_CACHE:-$HOME/.cache/pullbroker-test}

CRANE_DIR=$TEST_CACHE/crane-$CRANE_VERSION
CONFORMANCE_DIR=$TEST_CACHE/conformance-$CONFORMANCE_VERSION
ETCD_DIR=$TEST_CACHE/etcd-$ETCD_VERSION
KUBE_APISERVER_DIR=$TEST_CACHE/kube-apiserver-$KUBE_VERSION
KUBELET_DIR=$TEST_CACHE/kubelet-$KUBE_VERSION
VERSITYGW_DIR=$TEST_CACHE/versitygw-$VERSITYGW_VERSION
FAKE_GCS_SERVER_DIR=$TEST_CACHE/fake-gcs-server-$FAKE_GCS_SERVER_VERSION
AZURITE_DIR=$TEST_CACHE/azurite-$AZURITE_VERSION

# Tests are told about two folders, not one per tool: symlinks into the versioned folders above.
# PULLBROKER_TEST_TOOLS holds crane, conformance and the object-storage servers (versitygw for S3,
# fake-gcs-server for GCS, azurite-blob for Azure); KUBEBUILDER_ASSETS holds etcd and
# kube-apiserver (the layout controller-runtime's envtest expects) and the kubelet of the same
# Kubernetes version.
TOOLS_DIR=$TEST_CACHE/tools
KUBE_ASSETS_DIR=$TEST_CACHE/kubebuilder-assets
