package main

import (
	"encoding/json"
	"flag"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The harness re-executes itself for the two small servers it needs, so
// that they run in their own processes and not beside the load generator.

// runFileServer is the throughput ceiling: net/http's ServeFile of one
// file (sendfile on Linux), whatever the path asked.
func runFileServer(args []string) {
	fs := flag.NewFlagSet("fileserver", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	file := fs.String("file", "", "file to serve")
	_ = fs.Parse(args)
	srv := &http.Server{
		Addr:              *listen,
		ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.ServeFile(w, r, *file)
		}),
	}
	log.Fatal(srv.ListenAndServe())
}

// upstreamStats is what the counting proxy saw since its last reset.
type upstreamStats struct {
	Requests      int64            `json:"requests"`
	ByMethod      map[string]int64 `json:"byMethod"`
	ManifestReqs  int64            `json:"manifestRequests"`
	BlobReqs      int64            `json:"blobRequests"`
	BodyBytes     int64            `json:"bodyBytes"`
	BlobBodyBytes int64            `json:"blobBodyBytes"`
	// ManifestBodyBytes and BlobBodyBytes are what an image pull moves;
	// BodyBytes also has the /v2/ pings' "{}".
	ManifestBodyBytes int64 `json:"manifestBodyBytes"`
}

type counters struct {
	requests, manifests, blobs, bodyBytes, blobBytes, manifestBytes atomic.Int64
	mu                                                              sync.Mutex
	byMethod                                                        map[string]int64
}

func (c *counters) snapshot() upstreamStats {
	c.mu.Lock()
	m := make(map[string]int64, len(c.byMethod))
	for k, v := range c.byMethod {
		m[k] = v
	}
	c.mu.Unlock()
	return upstreamStats{
		Requests: c.requests.Load(), ByMethod: m, ManifestReqs: c.manifests.Load(),
		BlobReqs: c.blobs.Load(), BodyBytes: c.bodyBytes.Load(), BlobBodyBytes: c.blobBytes.Load(),
		ManifestBodyBytes: c.manifestBytes.Load(),
	}
}

func (c *counters) count(method string) {
	c.requests.Add(1)
	c.mu.Lock()
	c.byMethod[method]++
	c.mu.Unlock()
}

func (c *counters) reset() {
	c.mu.Lock()
	c.byMethod = map[string]int64{}
	c.mu.Unlock()
	c.requests.Store(0)
	c.manifests.Store(0)
	c.blobs.Store(0)
	c.bodyBytes.Store(0)
	c.blobBytes.Store(0)
	c.manifestBytes.Store(0)
}

type countingBody struct {
	io.ReadCloser
	total, kind *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.total.Add(int64(n))
	if b.kind != nil {
		b.kind.Add(int64(n))
	}
	return n, err
}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 256<<10)
}
func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// benchToken is the one Bearer token the counting proxy issues.
const benchToken = "bench-token"

// runCountProxy is a reverse proxy in front of the upstream that counts the
// requests and response body bytes the proxies under test cause. GET
// /__bench/stats reports them; POST /__bench/reset zeroes them.
//
// Like Docker Hub, it wants a Bearer token for /v2/ and hands one out
// anonymously at /__bench/token (on its own host, which go-containerregistry
// requires of a loopback realm). Token requests are counted as upstream
// requests. Without a challenge distribution's proxy would ping the
// upstream before every request, which real upstreams spare it.
func runCountProxy(args []string) {
	fs := flag.NewFlagSet("countproxy", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address")
	target := fs.String("target", "", "upstream base URL")
	_ = fs.Parse(args)
	realm := "http://" + *listen + "/__bench/token"
	u, err := url.Parse(*target)
	if err != nil {
		log.Fatal(err)
	}
	c := &counters{byMethod: map[string]int64{}}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = 256
	transport.DisableCompression = true
	rp := &httputil.ReverseProxy{
		Rewrite:    func(pr *httputil.ProxyRequest) { pr.SetURL(u) },
		Transport:  transport,
		BufferPool: &bufferPool{},
		ModifyResponse: func(resp *http.Response) error {
			var kind *atomic.Int64
			switch {
			case strings.Contains(resp.Request.URL.Path, "/blobs/"):
				kind = &c.blobBytes
			case strings.Contains(resp.Request.URL.Path, "/manifests/"):
				kind = &c.manifestBytes
			}
			resp.Body = &countingBody{ReadCloser: resp.Body, total: &c.bodyBytes, kind: kind}
			return nil
		},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /__bench/stats", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(c.snapshot())
	})
	mux.HandleFunc("POST /__bench/reset", func(w http.ResponseWriter, _ *http.Request) {
		c.reset()
	})
	mux.HandleFunc("GET /__bench/token", func(w http.ResponseWriter, r *http.Request) {
		c.count("TOKEN")
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"token": benchToken, "access_token": benchToken, "expires_in": 3600})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.count(r.Method)
		if r.Header.Get("Authorization") != "Bearer "+benchToken {
			w.Header().Set("WWW-Authenticate", `Bearer realm="`+realm+`",service="bench"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
		r.Header.Del("Authorization")
		switch {
		case strings.Contains(r.URL.Path, "/manifests/"):
			c.manifests.Add(1)
		case strings.Contains(r.URL.Path, "/blobs/"):
			c.blobs.Add(1)
		}
		rp.ServeHTTP(w, r)
	})
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
