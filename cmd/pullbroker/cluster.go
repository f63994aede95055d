package main

// The parts of serve that make one replica of several: its name, the
// images eviction keeps for the cluster, and its peers.

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullbroker/pullbroker/cache"
	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/kubeclient"
	"github.com/pullbroker/pullbroker/peers"
	"github.com/pullbroker/pullbroker/podimages"
)

// replicaName is cluster.name, or else the host name: the Pod name in
// Kubernetes, unique among replicas.
func replicaName(c config.Cluster) (string, error) {
	if c.Name != "" {
		return c.Name, nil
	}
	host, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("cluster.name: empty, and the host name is unknown (%v); set it", err)
	}
	return host, nil
}

// keptImages are the roots that eviction and GC keep besides pins: the
// locked rules' lock files and, with cache.keepRunningImages, the images
// the cluster's Pods use (once the watcher is started: serve and gc do,
// commands that never remove anything need no cluster).
type keptImages struct {
	locked  []cache.Root
	running *podimages.Watcher
}

// watchPods adds the running Pods' images when cfg asks for them; store
// resolves their tags through its own tag records.
func (k *keptImages) watchPods(cfg *config.Config, store *cache.Store, log *slog.Logger, reg prometheus.Registerer) {
	if !cfg.Cache.KeepRunningImages {
		return
	}
	k.running = podimages.New(podimages.Options{
		Config: cfg, Kubeconfig: cfg.Cluster.Kubeconfig, Tags: store,
		Logger: log.With("component", "podimages"), Registerer: reg,
	})
}

func (k *keptImages) roots(ctx context.Context) ([]cache.Root, error) {
	if k.running == nil {
		return k.locked, nil
	}
	running, err := k.running.Roots(ctx)
	return append(slices.Clip(k.locked), running...), err
}

// newPeers is this replica's view of its peers: the static cluster.peers
// list, or the EndpointSlices of cluster.peerService, watched until ctx ends.
func newPeers(ctx context.Context, c config.Cluster, log *slog.Logger, reg prometheus.Registerer) (*peers.Cluster, error) {
	var set *peers.Set
	if c.PeerService != "" {
		kube, err := kubeclient.RESTConfig(c.Kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("cluster.peerService: cluster.kubeconfig: %w", err)
		}
		if set, err = peers.WatchEndpointSlices(ctx, kube, c.PeerService, c.PeerListen, log.With("component", "peers")); err != nil {
			return nil, err
		}
	} else {
		var err error
		if set, err = peers.StaticSet(c.PeerListen, c.Peers); err != nil {
			return nil, err
		}
	}
	opts := peers.Options{Set: set, TokenFile: c.PeerTokenFile, Logger: log.With("component", "peers"), Registerer: reg}
	if c.PeerTLS.Enabled() {
		opts.TLS = &peers.TLSFiles{CertFile: c.PeerTLS.CertFile, KeyFile: c.PeerTLS.KeyFile, CAFile: c.PeerTLS.CAFile}
	}
	return peers.New(opts)
}
