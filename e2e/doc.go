// Package e2e holds pullbroker's end-to-end tests: the real pullbroker binary, built once by
// TestMain, runs as a subprocess with a generated config in front of Debian's docker-registry
// (htpasswd, the credential only in a passwordFile), and real clients pull through it: skopeo,
// crane, containerd's ctr (by image prefix and as a hosts.toml mirror) and podman, plus the OCI
// distribution-spec conformance suite in read-only mode. A real kubelet, registered with an envtest
// kube-apiserver, starts Pods through it (kubelet_test.go).
//
// The package has no code of its own; everything is in its tests. Run it with
// `scripts/test.sh ./e2e/...`, which installs the tools and runs it in a loopback-only network
// namespace. The helpers that start the tools are in internal/testenv.
package e2e
