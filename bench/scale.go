package main

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Measurement (8): pullbroker over a large cache. A synthetic cache
// (synthetic.go) is written straight into storage, then pullbroker starts
// on it: how soon it answers /v2/, how long its accounting of the cache
// takes (the pullbroker_cache_objects gauge reaching the number of
// objects written), its peak memory, and its pinned-tag HEAD rate against
// a pullbroker with the same configuration over a small cache, on the
// filesystem and on S3. It measures whatever the binary does; nothing in
// it knows how pullbroker indexes the cache.

// accountingLimit is how long (8) waits for the accounting to finish
// before it reports it unfinished and goes on.
const accountingLimit = 10 * time.Minute

// accountingStall: a count above zero that has not moved for this long
// will not reach the number of objects (a binary that counts them
// differently); (8) reports it unfinished and goes on.
const accountingStall = time.Minute

// objectsGauge is the metric whose value is the number of objects the
// accounting counted.
const objectsGauge = "pullbroker_cache_objects"

// Buckets of (8) on S3.
const (
	scaleBucketLarge = "pullbroker-scale-large"
	scaleBucketSmall = "pullbroker-scale-small"
)

func (e *env) scale(ctx context.Context, r *results, sz sizes) error {
	if err := e.headImage(ctx); err != nil {
		return err
	}
	res := &scaleResult{headWorkers: sz.headWorkers, headRounds: sz.headRounds, recordCacheTTL: s3RecordCacheTTL}
	r.scale = res

	// The filesystem. The synthetic cache is written once, then moved
	// into the bucket for S3: rewriting a million files would take
	// minutes. One large cache is on disk at a time (a million blobs take
	// about 8 GB of directories and 4 KiB blocks).
	large, err := e.freshDir("scale-fs-large")
	if err != nil {
		return err
	}
	small, err := e.freshDir("scale-fs-small")
	if err != nil {
		return err
	}
	log.Printf("(8) writing %d blobs and %d tag records", sz.scaleBlobs, sz.scaleTags)
	start := time.Now()
	c, err := writeSynthetic(large, sz.scaleBlobs, sz.scaleTags)
	if err != nil {
		return fmt.Errorf("(8) writing the synthetic cache: %w", err)
	}
	res.cache, res.writeTime = c, time.Since(start)
	run, err := e.scaleRun(ctx, "filesystem", c.objects(), filesystemStorage(large, 0), filesystemStorage(small, 0), sz)
	if err != nil {
		return err
	}
	res.runs = append(res.runs, run)

	// S3.
	srv, err := e.s3Server(ctx)
	if err != nil {
		return err
	}
	for _, b := range []string{scaleBucketLarge, scaleBucketSmall} {
		if err := srv.createBucket(ctx, b); err != nil {
			return err
		}
	}
	// The filesystem run stored the HEAD image beside the synthetic
	// objects: count what the bucket holds under blobs/ now. Its leader
	// published the usage it counted under cluster/, which would let the
	// S3 run's replica skip the walk whose time is measured: that goes.
	objects, err := countBlobFiles(large)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(large, "cluster")); err != nil {
		return err
	}
	// The bucket's folder is empty (its metadata is in the sidecar folder).
	if err := os.Remove(srv.bucketDir(scaleBucketLarge)); err != nil {
		return err
	}
	if err := os.Rename(large, srv.bucketDir(scaleBucketLarge)); err != nil {
		return fmt.Errorf("(8) moving the synthetic cache into bucket %s: %w", scaleBucketLarge, err)
	}
	spool, err := e.freshDir("scale-spool")
	if err != nil {
		return err
	}
	run, err = e.scaleRun(ctx, "S3", objects,
		srv.storage(scaleBucketLarge, spool, s3RecordCacheTTL), srv.storage(scaleBucketSmall, spool, s3RecordCacheTTL), sz)
	if err != nil {
		return err
	}
	res.runs = append(res.runs, run)
	log.Printf("(8) removing the synthetic cache")
	start = time.Now()
	if err := removeTree(srv.bucketDir(scaleBucketLarge)); err != nil {
		return err
	}
	log.Printf("(8) removed in %s", time.Since(start).Round(time.Second))
	return nil
}

// removeTree removes a synthetic cache at root, its 256 blob folders in
// parallel: a million blobs are two million inodes, minutes to unlink one
// after the other.
func removeTree(root string) error {
	dirs := make(chan string)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 2 * runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range dirs {
				if err := os.RemoveAll(d); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range 256 {
		dirs <- filepath.Join(root, "blobs", "sha256", fmt.Sprintf("%02x", i))
	}
	close(dirs)
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
	}
	return os.RemoveAll(root)
}

// countBlobFiles counts the objects under root/blobs/ (files named data).
func countBlobFiles(root string) (int, error) {
	n := 0
	err := filepath.WalkDir(filepath.Join(root, "blobs"), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == "data" {
			n++
		}
		return err
	})
	return n, err
}

// scaleRun starts a pullbroker on the small storage and then one on the
// large, which holds objects objects under blobs/, and measures the large
// one's start, accounting and memory, and both HEAD rates. Both are
// stopped when it returns.
func (e *env) scaleRun(ctx context.Context, storage string, objects int, largeStorage, smallStorage string, sz sizes) (scaleRun, error) {
	run := scaleRun{storage: storage, objects: objects}
	name := "pullbroker-scale-" + strings.ToLower(storage)

	smallPB, err := e.launchPullbroker(name+"-small", smallStorage)
	if err != nil {
		return run, err
	}
	defer smallPB.p.stop()
	if err := smallPB.waitReady(ctx); err != nil {
		return run, err
	}

	log.Printf("(8) %s: starting pullbroker over %d objects", storage, objects)
	largePB, err := e.launchPullbroker(name, largeStorage)
	if err != nil {
		return run, err
	}
	defer largePB.p.stop()
	if run.ready, err = waitV2(ctx, largePB); err != nil {
		return run, err
	}
	run.accounted, run.counted, err = waitCounted(ctx, largePB, objects)
	if err != nil {
		return run, err
	}
	run.rssAccounted, _ = procStatusKB(largePB.p.pid(), "VmHWM")
	run.rssAccounted <<= 10
	log.Printf("(8) %s: /v2/ after %s, %d objects counted after %s", storage, run.ready.Round(time.Millisecond), run.counted, run.accounted.Round(time.Millisecond))

	pinnedURL := func(pb *pbInstance) string { return manifestURL(pb.url, "bench/head", "pinned") }
	for _, pb := range []*pbInstance{smallPB, largePB} {
		if _, err := headLoad(ctx, pinnedURL(pb), 1, 1, time.Minute); err != nil { // resolves and pins the tag
			return run, fmt.Errorf("(8) warm-up HEAD: %w", err)
		}
	}
	pbs := []*pbInstance{largePB, smallPB}
	for round := range sz.headRounds {
		for i := range pbs {
			pb := pbs[(i+round)%len(pbs)]
			log.Printf("(8) %s: round %d: HEADs, %s cache", storage, round+1, map[bool]string{true: "large", false: "small"}[pb == largePB])
			h, err := headLoad(ctx, pinnedURL(pb), sz.headWorkers, sz.headReqs, sz.headMax)
			if err != nil {
				return run, fmt.Errorf("(8) HEADs: %w", err)
			}
			if pb == largePB {
				run.headLarge = append(run.headLarge, h.rate())
			} else {
				run.headSmall = append(run.headSmall, h.rate())
			}
		}
	}
	for _, x := range []struct {
		pb  *pbInstance
		out *int64
	}{{largePB, &run.rssPeak}, {smallPB, &run.rssSmall}} {
		kb, err := procStatusKB(x.pb.p.pid(), "VmHWM")
		if err != nil {
			return run, err
		}
		*x.out = kb << 10
	}
	return run, nil
}

// waitV2 polls pullbroker's /v2/ until it answers and returns the time
// since the process was started.
func waitV2(ctx context.Context, pb *pbInstance) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	c := newClient(1)
	defer c.CloseIdleConnections()
	for {
		select {
		case <-pb.p.done:
			return 0, fmt.Errorf("%s exited before it answered /v2/: %v (see its log)", pb.p.name, pb.p.err)
		default:
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, pb.url+"/v2/", nil)
		if resp, err := c.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return time.Since(pb.started), nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%s did not answer /v2/: %w", pb.p.name, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitCounted polls pullbroker's objects gauge until it reaches want, or
// accountingLimit passed since the start, or the gauge stood still above
// zero for accountingStall (then counted is short of want and err nil),
// and returns the time since the process was started.
func waitCounted(ctx context.Context, pb *pbInstance, want int) (took time.Duration, counted int, err error) {
	last, lastChange := 0, time.Now()
	for {
		counted, err = objectsCounted(ctx, pb.adminURL)
		if err != nil {
			return 0, 0, err
		}
		took = time.Since(pb.started)
		if counted != last {
			last, lastChange = counted, time.Now()
		}
		if counted >= want || took > accountingLimit || (counted > 0 && time.Since(lastChange) > accountingStall) {
			return took, counted, nil
		}
		select {
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		case <-pb.p.done:
			return 0, 0, fmt.Errorf("%s exited during accounting: %v (see its log)", pb.p.name, pb.p.err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// objectsCounted reads the objects gauge from the admin listener's
// /metrics.
func objectsCounted(ctx context.Context, adminURL string) (int, error) {
	v, err := gaugeValue(ctx, adminURL, objectsGauge)
	return int(v), err
}

// gaugeValue reads the metric name (without labels) from /metrics of
// the admin listener at adminURL.
func gaugeValue(ctx context.Context, adminURL, name string) (float64, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, adminURL+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s/metrics has no %s", adminURL, name)
}
