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
	if name, err := replicaName(cfg.Cluster); err != nil || name != host {
		t.Fatalf("replica name = %q, %v; want the host name %q", name, err, host)
	}
	t.Setenv("PULLBROKER_CLUSTER_NAME", "replica-1")
	if cfg, err = loadConfig(newRootCmd()); err != nil {
		t.Fatal(err)
	}
	if name, err := replicaName(cfg.Cluster); err != nil || name != "replica-1" {
		t.Fatalf("replica name with cluster.name set = %q, %v; want replica-1", name, err)
	}
}
