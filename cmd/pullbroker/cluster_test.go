package main

import (
	"os"
	"testing"
)

// cluster.name, which names this replica in the leader lease, is the host
// name (the Pod name in Kubernetes) unless set.
func TestClusterNameDefaultsToHostName(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(newRootCmd())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cluster.Name != host {
		t.Fatalf("cluster.name = %q, want the host name %q", cfg.Cluster.Name, host)
	}
	t.Setenv("PULLBROKER_CLUSTER_NAME", "replica-1")
	if cfg, err = loadConfig(newRootCmd()); err != nil || cfg.Cluster.Name != "replica-1" {
		t.Fatalf("cluster.name set: %v, %v", cfg, err)
	}
}
