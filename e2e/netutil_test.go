package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// connCounter is a TCP listener on 127.0.0.1 that counts the connections it is offered and
// closes each at once: an upstream that must never be contacted.
type connCounter struct {
	ln net.Listener
	n  atomic.Int64
}

func newConnCounter(t *testing.T) *connCounter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &connCounter{ln: ln}
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			c.n.Add(1)
			conn.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return c
}

func (c *connCounter) endpoint() string { return "http://" + c.ln.Addr().String() }

func (c *connCounter) count() int64 { return c.n.Load() }

// upstreamProxy is a reverse proxy between pullbroker and docker-registry that counts the
// requests pullbroker makes, by "METHOD kind" (kind: manifest, blob, tags, base, other), in all and
// per repository, counts the response body bytes it relays, and can slow blob bodies down. Put in
// front of pullbroker, it counts what a client asks of pullbroker.
type upstreamProxy struct {
	srv *httptest.Server
	mu  sync.Mutex
	n   map[string]int
	// repos holds the counts per repository as the request path names it, bytes the body bytes.
	repos map[string]map[string]int
	bytes map[string]int64
	// bytesPerSecond, when not zero, throttles every blob body.
	bytesPerSecond atomic.Int64
}

func newUpstreamProxy(t *testing.T, target string) *upstreamProxy {
	t.Helper()
	u, err := url.Parse("http://" + target)
	if err != nil {
		t.Fatal(err)
	}
	p := &upstreamProxy{n: map[string]int{}, repos: map[string]map[string]int{}, bytes: map[string]int64{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		if rate := p.bytesPerSecond.Load(); rate > 0 && resp.Request.Method == http.MethodGet && requestKind(resp.Request.URL.Path) == "blob" {
			resp.Body = &throttledBody{rc: resp.Body, rate: rate}
		}
		resp.Body = &countedBody{rc: resp.Body, p: p, repo: requestRepo(resp.Request.URL.Path)}
		return nil
	}
	p.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		key, repo := r.Method+" "+requestKind(r.URL.Path), requestRepo(r.URL.Path)
		p.mu.Lock()
		p.n[key]++
		if p.repos[repo] == nil {
			p.repos[repo] = map[string]int{}
		}
		p.repos[repo][key]++
		p.mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.srv.Close)
	return p
}

func (p *upstreamProxy) endpoint() string { return p.srv.URL }

// counts returns a copy of the request counts.
func (p *upstreamProxy) counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int, len(p.n))
	for k, v := range p.n {
		out[k] = v
	}
	return out
}

// repoCounts returns a copy of the request counts for one repository ("library/app", or
// "docker.io/library/app" in the image-prefix form).
func (p *upstreamProxy) repoCounts(repo string) map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]int{}
	for k, v := range p.repos[repo] {
		out[k] = v
	}
	return out
}

// repoBytes is the number of response body bytes relayed for one repository.
func (p *upstreamProxy) repoBytes(repo string) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes[repo]
}

// total is the number of requests seen.
func (p *upstreamProxy) total() int {
	n := 0
	for _, v := range p.counts() {
		n += v
	}
	return n
}

func requestKind(path string) string {
	switch {
	case path == "/v2/" || path == "/v2":
		return "base"
	case strings.Contains(path, "/manifests/"):
		return "manifest"
	case strings.Contains(path, "/blobs/"):
		return "blob"
	case strings.HasSuffix(path, "/tags/list"):
		return "tags"
	}
	return "other"
}

// requestRepo is the repository a /v2/<repo>/manifests|blobs|tags/... path names; "" for others.
func requestRepo(path string) string {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		return ""
	}
	for _, sep := range []string{"/manifests/", "/blobs/", "/tags/"} {
		if i := strings.LastIndex(rest, sep); i > 0 {
			return rest[:i]
		}
	}
	return ""
}

// countedBody adds what is read through it to its proxy's byte count for repo.
type countedBody struct {
	rc   io.ReadCloser
	p    *upstreamProxy
	repo string
}

func (b *countedBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		b.p.mu.Lock()
		b.p.bytes[b.repo] += int64(n)
		b.p.mu.Unlock()
	}
	return n, err
}

func (b *countedBody) Close() error { return b.rc.Close() }

// throttledBody passes a body on at about rate bytes per second, in 32 KiB steps.
type throttledBody struct {
	rc   io.ReadCloser
	rate int64
}

func (b *throttledBody) Read(p []byte) (int, error) {
	const step = 32 << 10
	if len(p) > step {
		p = p[:step]
	}
	n, err := b.rc.Read(p)
	if n > 0 {
		time.Sleep(time.Duration(int64(n) * int64(time.Second) / b.rate))
	}
	return n, err
}

func (b *throttledBody) Close() error { return b.rc.Close() }

// tapProxy sits between clients and pullbroker and searches every response it relays, status
// line, headers and body, for the test's secrets.
type tapProxy struct {
	srv       *httptest.Server
	sec       *secrets
	mu        sync.Mutex
	scanners  []*leakScanner
	responses atomic.Int64
	bodyBytes atomic.Int64
}

func newTapProxy(t *testing.T, sec *secrets, target string) *tapProxy {
	t.Helper()
	u, err := url.Parse("http://" + target)
	if err != nil {
		t.Fatal(err)
	}
	tp := &tapProxy{sec: sec}
	rp := httputil.NewSingleHostReverseProxy(u)
	rp.ModifyResponse = func(resp *http.Response) error {
		where := fmt.Sprintf("response to %s %s (%s)", resp.Request.Method, resp.Request.URL, resp.Status)
		s := sec.scanner(where)
		fmt.Fprintf(s, "%s\n", resp.Status)
		_ = resp.Header.Write(s)
		tp.mu.Lock()
		tp.scanners = append(tp.scanners, s)
		tp.mu.Unlock()
		tp.responses.Add(1)
		resp.Body = &teeBody{rc: resp.Body, w: s, n: &tp.bodyBytes}
		return nil
	}
	tp.srv = httptest.NewServer(rp)
	t.Cleanup(tp.srv.Close)
	return tp
}

// addr is the tap's host:port: clients pull from it as they would from pullbroker.
func (tp *tapProxy) addr() string { return strings.TrimPrefix(tp.srv.URL, "http://") }

// report fails the test for every secret a relayed response held.
func (tp *tapProxy) report(t *testing.T) {
	t.Helper()
	tp.mu.Lock()
	defer tp.mu.Unlock()
	for _, s := range tp.scanners {
		s.report(t)
	}
}

type teeBody struct {
	rc io.ReadCloser
	w  io.Writer
	n  *atomic.Int64
}

func (b *teeBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if n > 0 {
		_, _ = b.w.Write(p[:n])
		b.n.Add(int64(n))
	}
	return n, err
}

func (b *teeBody) Close() error { return b.rc.Close() }
