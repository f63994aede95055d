package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// acceptManifests is what containerd sends when it resolves a tag.
const acceptManifests = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, " +
	"application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"

// newClient is a keep-alive HTTP/1.1 client sized for conns concurrent
// requests to one host. Each measurement gets a fresh one.
func newClient(conns int) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: conns + 8,
		DisableCompression:  true,
		ReadBufferSize:      256 << 10,
		IdleConnTimeout:     30 * time.Second,
	}}
}

func blobURL(base, repo, digest string) string { return base + "/v2/" + repo + "/blobs/" + digest }
func manifestURL(base, repo, ref string) string {
	return base + "/v2/" + repo + "/manifests/" + ref
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// drain reads body to the end with a large buffer (io.Discard's own
// ReadFrom reads 8 KiB at a time), hashing it when h is set.
func drain(body io.Reader, h hash.Hash) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	return drainWith(body, h, *bp)
}

// drainWith is drain with the caller's buffer.
func drainWith(body io.Reader, h hash.Hash, buf []byte) (int64, error) {
	var n int64
	for {
		m, err := body.Read(buf)
		n += int64(m)
		if h != nil && m > 0 {
			h.Write(buf[:m])
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// getBlob GETs url and checks that size bytes arrive (and the digest, when
// verify is set).
func getBlob(ctx context.Context, c *http.Client, url string, size int64, digest string, verify bool) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var h hash.Hash
	if verify {
		h = sha256.New()
	}
	n, err := drain(resp.Body, h)
	if err != nil {
		return fmt.Errorf("GET %s: after %d bytes: %w", url, n, err)
	}
	if n != size {
		return fmt.Errorf("GET %s: %d bytes, want %d", url, n, size)
	}
	if verify && "sha256:"+hex.EncodeToString(h.Sum(nil)) != digest {
		return fmt.Errorf("GET %s: content does not match its digest", url)
	}
	return nil
}

// throughput has clients concurrent clients each GET the blob perClient
// times, and returns the aggregate rate in bytes per second.
func throughput(ctx context.Context, url string, size int64, clients, perClient int) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c := newClient(clients)
	defer c.CloseIdleConnections()
	// One warm-up request opens nothing but checks the URL.
	if err := getBlob(ctx, c, url, size, "", false); err != nil {
		return 0, err
	}
	var wg sync.WaitGroup
	var firstErr atomic.Pointer[error]
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perClient {
				if err := getBlob(ctx, c, url, size, "", false); err != nil {
					firstErr.CompareAndSwap(nil, &err)
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if p := firstErr.Load(); p != nil {
		return 0, *p
	}
	return float64(size) * float64(clients*perClient) / elapsed.Seconds(), nil
}

type headResult struct {
	requests int
	errors   int
	elapsed  time.Duration
}

func (r headResult) rate() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// headLoad sends HEADs for a tag from workers concurrent clients until
// total were sent or maxDur passed.
func headLoad(ctx context.Context, url string, workers, total int, maxDur time.Duration) (headResult, error) {
	ctx, cancel := context.WithTimeout(ctx, maxDur)
	defer cancel()
	c := newClient(workers)
	defer c.CloseIdleConnections()
	head := func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Accept", acceptManifests)
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") == "" {
			return fmt.Errorf("HEAD %s: %s", url, resp.Status)
		}
		return nil
	}
	if err := head(); err != nil { // warm: the tag is resolved once
		return headResult{}, err
	}
	var sent, ok, failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sent.Add(1) <= int64(total) && ctx.Err() == nil {
				if err := head(); err != nil {
					if ctx.Err() != nil {
						return
					}
					failed.Add(1)
					continue
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	res := headResult{requests: int(ok.Load()), errors: int(failed.Load()), elapsed: time.Since(start)}
	if res.errors > 0 {
		return res, fmt.Errorf("%d of %d HEADs failed", res.errors, res.errors+res.requests)
	}
	return res, nil
}

type manifest struct {
	Config struct {
		Digest string `json:"digest"`
		Size   int64  `json:"size"`
	} `json:"config"`
	Layers []struct {
		Digest string `json:"digest"`
		Size   int64  `json:"size"`
	} `json:"layers"`
}

func getManifest(ctx context.Context, c *http.Client, base, repo, tag string) (manifest, error) {
	var m manifest
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, manifestURL(base, repo, tag), nil)
	if err != nil {
		return m, err
	}
	addAuth(ctx, req)
	req.Header.Set("Accept", acceptManifests)
	resp, err := c.Do(req)
	if err != nil {
		return m, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return m, fmt.Errorf("GET manifest %s:%s: %s", repo, tag, resp.Status)
	}
	return m, json.NewDecoder(resp.Body).Decode(&m)
}

// pullImage is one client pulling an image as containerd does: the
// manifest, then the config and the layers three at a time.
func pullImage(ctx context.Context, c *http.Client, base string, img *benchImage, verify bool) error {
	m, err := getManifest(ctx, c, base, img.repo, img.tag)
	if err != nil {
		return err
	}
	if len(m.Layers) != len(img.layers) {
		return fmt.Errorf("manifest of %s lists %d layers, want %d", img.repo, len(m.Layers), len(img.layers))
	}
	if err := getBlob(ctx, c, blobURL(base, img.repo, m.Config.Digest), m.Config.Size, m.Config.Digest, verify); err != nil {
		return err
	}
	errs := make(chan error, len(m.Layers))
	for _, l := range m.Layers {
		go func() {
			errs <- getBlob(ctx, c, blobURL(base, img.repo, l.Digest), l.Size, l.Digest, verify)
		}()
	}
	var all []error
	for range m.Layers {
		all = append(all, <-errs)
	}
	return errors.Join(all...)
}

// coldPull has clients clients pull the image at once, client i through
// bases[i % len(bases)], and returns the wall time until the last
// finished. The first verify clients check digests.
func coldPull(ctx context.Context, bases []string, img *benchImage, clients, verify int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c := newClient(clients * 4)
	defer c.CloseIdleConnections()
	errs := make(chan error, clients)
	start := time.Now()
	for i := range clients {
		go func() { errs <- pullImage(ctx, c, bases[i%len(bases)], img, i < verify) }()
	}
	var all []error
	for range clients {
		all = append(all, <-errs)
	}
	return time.Since(start), errors.Join(all...)
}

// coldTTFB GETs each layer of a never-pulled image (after its manifest, as
// a client would) and returns the time from sending each request to the
// first byte of its body.
func coldTTFB(ctx context.Context, base string, img *benchImage) ([]time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c := newClient(1)
	defer c.CloseIdleConnections()
	m, err := getManifest(ctx, c, base, img.repo, img.tag)
	if err != nil {
		return nil, err
	}
	var out []time.Duration
	for _, l := range m.Layers {
		ttfb, err := timeToFirstByte(ctx, c, blobURL(base, img.repo, l.Digest), l.Size)
		if err != nil {
			return nil, err
		}
		out = append(out, ttfb)
	}
	return out, nil
}

// timeToFirstByte GETs a blob of size bytes and returns the time from
// sending the request to the first byte of its body; the rest is read and
// counted.
func timeToFirstByte(ctx context.Context, c *http.Client, url string, size int64) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	addAuth(ctx, req)
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var one [1]byte
	n, err := io.ReadFull(resp.Body, one[:])
	ttfb := time.Since(start)
	if err != nil {
		return 0, err
	}
	rest, err := drain(resp.Body, nil)
	if err != nil {
		return 0, err
	}
	if int64(n)+rest != size {
		return 0, fmt.Errorf("GET %s: %d bytes, want %d", url, int64(n)+rest, size)
	}
	return ttfb, nil
}

type authKey struct{}

// withAuth makes the requests of ctx carry authorization: the counting
// proxy's token, when the harness talks to the upstream itself.
func withAuth(ctx context.Context, authorization string) context.Context {
	return context.WithValue(ctx, authKey{}, authorization)
}

func addAuth(ctx context.Context, req *http.Request) {
	if a, ok := ctx.Value(authKey{}).(string); ok {
		req.Header.Set("Authorization", a)
	}
}
