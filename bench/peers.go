package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pullbroker/pullbroker/peers"
)

// Measurement (9): replicas that fetch each blob from the upstream once
// between them (issue 11). Three pullbrokers on one versitygw bucket know
// each other from a static cluster.peers list; one more pullbroker, on a
// bucket of its own and without peers, is the reference. Both are in
// front of the counting proxy.

const (
	peersBucket       = "pullbroker-peers"
	peersSingleBucket = "pullbroker-peers-single"
	peersReplicas     = 3
	// peersRecordCacheTTL is what config.example.yaml advises for replicas
	// on one bucket; the reference has the same.
	peersRecordCacheTTL = 2 * time.Second
)

// Rows of (9)'s cold pulls.
const (
	peersSingle = "one replica"
	peersThree  = "three replicas with peers"
)

// peersResult is measurement (9).
type peersResult struct {
	replicas, clients int
	layers            int
	layerSize         int64
	// image is the bytes of one cold image (manifest, config, layers).
	image int64
	// rounds holds each round's cold pulls, the reference's and the
	// replicas', each of an image new to both.
	rounds []map[string]coldRow
	// ttfbLayerSize is the size of each blob of the TTFB comparison;
	// ttfbOwner and ttfbNonOwner the times to first byte of cold blobs
	// GET through their owner and through another replica.
	ttfbLayerSize           int64
	ttfbOwner, ttfbNonOwner []time.Duration
}

// peers is measurement (9).
func (e *env) peers(ctx context.Context, r *results, sz sizes) error {
	srv, err := e.s3Server(ctx)
	if err != nil {
		return err
	}
	for _, b := range []string{peersBucket, peersSingleBucket} {
		if err := srv.createBucket(ctx, b); err != nil {
			return err
		}
	}
	res := &peersResult{replicas: peersReplicas, clients: sz.coldClients, layers: sz.coldLayers, layerSize: sz.coldLayer, ttfbLayerSize: sz.peerTTFBSize}
	r.peers = res

	tokenFile := filepath.Join(e.o.out, "peer-token")
	token := make([]byte, 16)
	if _, err := rand.Read(token); err != nil {
		return err
	}
	if err := os.WriteFile(tokenFile, []byte(hex.EncodeToString(token)+"\n"), 0o600); err != nil {
		return err
	}
	members := make([]string, peersReplicas)
	for i := range members {
		members[i] = fmt.Sprintf("127.0.0.1:%d", mustPort())
	}
	var replicas []*pbInstance
	for i, listen := range members {
		spool, err := e.freshDir(fmt.Sprintf("peers-spool-%d", i))
		if err != nil {
			return err
		}
		cluster := fmt.Sprintf("cluster:\n  peers: [%s]\n  peerListen: %s\n  peerTokenFile: %s\n", strings.Join(members, ", "), listen, tokenFile)
		pb, err := e.launchPullbroker(fmt.Sprintf("pullbroker-peer-%d", i), srv.storage(peersBucket, spool, peersRecordCacheTTL)+cluster)
		if err != nil {
			return err
		}
		replicas = append(replicas, pb)
	}
	spool, err := e.freshDir("peers-spool-single")
	if err != nil {
		return err
	}
	single, err := e.launchPullbroker("pullbroker-peers-single", srv.storage(peersSingleBucket, spool, peersRecordCacheTTL))
	if err != nil {
		return err
	}
	all := append([]*pbInstance{single}, replicas...)
	for _, pb := range all {
		if err := pb.waitReady(ctx); err != nil {
			return err
		}
	}
	replicaURLs := make([]string, len(replicas))
	for i, pb := range replicas {
		replicaURLs[i] = pb.url
	}

	// Cold pulls: each round an image neither cache holds, pulled by all
	// the clients through the reference and through the replicas (the
	// clients spread over them), in an order swapped every round.
	pulls := []struct {
		name string
		urls []string
	}{{peersSingle, []string{single.url}}, {peersThree, replicaURLs}}
	for round := range sz.peerRounds {
		var layers []*fileLayer
		for i := range sz.coldLayers {
			l, err := randomFile(filepath.Join(e.dirs["data"], fmt.Sprintf("peers-%d-%d", round, i)), sz.coldLayer, uint64(100+10*round+i))
			if err != nil {
				return err
			}
			layers = append(layers, l)
		}
		img, err := pushImage(ctx, e.upHost, fmt.Sprintf("bench/peers-%d", round), []string{"v1"}, layers)
		if err != nil {
			return err
		}
		res.image = img.total
		rows := map[string]coldRow{}
		for i := range pulls {
			p := pulls[(i+round)%len(pulls)]
			log.Printf("(9) round %d: cold pull by %d clients through %s", round+1, sz.coldClients, p.name)
			if err := e.resetCounts(ctx); err != nil {
				return err
			}
			// The first client of each replica checks digests, and as many
			// clients of the one replica: the harness hashes alike in both.
			wall, err := coldPull(ctx, p.urls, img, sz.coldClients, peersReplicas)
			if err != nil {
				return fmt.Errorf("(9) %s: %w", p.name, err)
			}
			st, err := e.stats(ctx)
			if err != nil {
				return err
			}
			upstream := st.ManifestBodyBytes + st.BlobBodyBytes
			rows[p.name] = coldRow{server: p.name, wall: wall, upstreamBytes: upstream, blobRequests: st.BlobReqs, ratio: float64(upstream) / float64(img.total)}
			if err := fillsDone(ctx, all); err != nil {
				return err
			}
		}
		res.rounds = append(res.rounds, rows)
	}

	// Time to first byte of cold blobs through their owner and through
	// another replica, alternately, one blob after the other, each once
	// the fills of the one before were committed.
	var layers []*fileLayer
	for i := range 2 * sz.peerTTFBBlobs {
		l, err := randomFile(filepath.Join(e.dirs["data"], fmt.Sprintf("peers-ttfb-%d", i)), sz.peerTTFBSize, uint64(200+i))
		if err != nil {
			return err
		}
		layers = append(layers, l)
	}
	img, err := pushImage(ctx, e.upHost, "bench/peers-ttfb", []string{"v1"}, layers)
	if err != nil {
		return err
	}
	set := peers.NewSet(nil)
	set.Update(members)
	c := newClient(1)
	defer c.CloseIdleConnections()
	if _, err := getManifest(ctx, c, replicaURLs[0], img.repo, img.tag); err != nil {
		return err
	}
	log.Printf("(9) cold TTFB through the owner and through another replica, %d blobs each", sz.peerTTFBBlobs)
	for i, l := range layers {
		owner := 0
		for j, m := range members {
			if m == set.Owner(l.digest.String()) {
				owner = j
			}
		}
		through := owner
		if i%2 == 1 {
			through = (owner + 1) % len(members)
		}
		if err := fillsDone(ctx, replicas); err != nil {
			return err
		}
		d, err := timeToFirstByte(ctx, c, blobURL(replicaURLs[through], img.repo, l.digest.String()), l.size)
		if err != nil {
			return fmt.Errorf("(9) cold TTFB: %w", err)
		}
		if through == owner {
			res.ttfbOwner = append(res.ttfbOwner, d)
		} else {
			res.ttfbNonOwner = append(res.ttfbNonOwner, d)
		}
	}
	return nil
}

// wallRatios are the per-round ratios of the replicas' wall time to
// the reference's.
func (p *peersResult) wallRatios() []float64 {
	var out []float64
	for _, rows := range p.rounds {
		if one := rows[peersSingle].wall; one > 0 {
			out = append(out, float64(rows[peersThree].wall)/float64(one))
		}
	}
	return out
}

// fillsGauge counts a pullbroker's fills that have not ended: fetched,
// verified and committed to storage.
const fillsGauge = "pullbroker_fills_in_flight"

// fillsDone waits until no fill of any of pbs is still running (a fill
// commits to the bucket after its clients got their last byte), so that
// the next phase does not share the machine with the last one's commits.
func fillsDone(ctx context.Context, pbs []*pbInstance) error {
	deadline := time.Now().Add(2 * time.Minute)
	for _, pb := range pbs {
		for {
			n, err := gaugeValue(ctx, pb.adminURL, fillsGauge)
			if err != nil {
				return err
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s still has %.0f fills running 2 minutes after its clients were done", pb.url, n)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}
