package proxy_test

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/config"
)

// TestTooManyFillsAnswer503WithRetryAfter (issue 12): beyond
// storage.fills.maxConcurrent a blob that needs a new fill is refused with
// 503 and Retry-After, before any upstream request; once the running fill
// ends it is served.
func TestTooManyFillsAnswer503WithRetryAfter(t *testing.T) {
	e := newEnvWithConfig(t, "filesystem", func(c *config.Config) { c.Storage.Fills.MaxConcurrent = 1 })
	a, b := randomBytes(t, 64<<10), randomBytes(t, 64<<10)
	_, layers := e.pushLayers("team/app", a, b)
	e.fetchManifest("team/app")
	release := make(chan struct{})
	interceptBlobGETs(e.up, layers[0], release, nil)

	first := make(chan response, 1)
	go func() { first <- e.do(http.MethodGet, blobPath("team/app", layers[0])) }()
	eventually(t, "the first fill runs", func() bool { return e.gauge("pullbroker_fills_in_flight") == 1 })

	r := e.do(http.MethodGet, blobPath("team/app", layers[1]))
	wantError(t, "GET while the only fill slot is taken", r, http.StatusServiceUnavailable, "UNAVAILABLE")
	if got := r.Header.Get("Retry-After"); got == "" {
		t.Error("503 without Retry-After")
	} else if secs, err := strconv.Atoi(got); err != nil || secs <= 0 {
		t.Errorf("Retry-After %q is not a positive number of seconds", got)
	}
	if n := e.up.Count(http.MethodGet, "/blobs/"+layers[1].String()); n != 0 {
		t.Errorf("a refused fill made %d upstream GETs", n)
	}

	close(release)
	if r := <-first; r.StatusCode != http.StatusOK || !bytes.Equal(r.body, a) {
		t.Fatalf("the running fill: %d, %d bytes", r.StatusCode, len(r.body))
	}
	eventually(t, "the slot is free", func() bool { return e.gauge("pullbroker_fills_in_flight") == 0 })
	r = e.do(http.MethodGet, blobPath("team/app", layers[1]))
	if r.StatusCode != http.StatusOK || !bytes.Equal(r.body, b) {
		t.Fatalf("after the slot freed: %d, %d bytes", r.StatusCode, len(r.body))
	}
}

// TestBlobStreamedUncachedWhenStorageCannotTakeIt (issue 12): when a fill
// cannot spool (here the spool directory cannot be created; a full disk
// in TestDiskFull and the e2e suite), the client still gets the verified
// blob with a 200, nothing is cached, and a bad upstream body never
// completes a response.
func TestBlobStreamedUncachedWhenStorageCannotTakeIt(t *testing.T) {
	notADir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notADir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e := newEnvWithConfig(t, "inmemory", func(c *config.Config) { c.Storage.SpoolDir = filepath.Join(notADir, "spool") })
	content := randomBytes(t, 300<<10)
	d := e.pushBlobImage("team/app", content)
	e.fetchManifest("team/app")

	for i := range 2 {
		r := e.do(http.MethodGet, blobPath("team/app", d))
		if r.StatusCode != http.StatusOK || r.readErr != nil {
			t.Fatalf("GET %d: %d, %v: %s", i, r.StatusCode, r.readErr, r.body)
		}
		sameBytes(t, "streamed blob", r.body, content)
	}
	if committed(t, e.store, d) {
		t.Fatal("blob cached although storage could not take it")
	}
	if n := e.up.Count(http.MethodGet, "/blobs/"); n != 2 {
		t.Errorf("upstream GETs = %d, want one per uncached request", n)
	}

	for _, name := range []string{"wrong last byte", "truncated chunked"} {
		interceptBlobGETs(e.up, d, nil, func(w http.ResponseWriter) { badBodies[name](w, content) })
		r := e.do(http.MethodGet, blobPath("team/app", d))
		if r.StatusCode == http.StatusOK && r.readErr == nil {
			t.Errorf("%s: a complete 200 response of %d bytes from a bad upstream body", name, len(r.body))
		}
	}
}

// TestEndlessBlobBodyIsCutAtItsDescriptorSize (issue 12): an upstream that
// sends a blob body without Content-Length and never ends it is cut once
// it exceeds the size the manifest's descriptor gives; nothing is cached.
func TestEndlessBlobBodyIsCutAtItsDescriptorSize(t *testing.T) {
	e := newEnv(t, "filesystem")
	content := randomBytes(t, 64<<10)
	d := e.pushBlobImage("team/app", content)
	e.fetchManifest("team/app")
	sent := make(chan int, 1)
	interceptBlobGETs(e.up, d, nil, func(w http.ResponseWriter) {
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		n := 0
		for {
			if _, err := w.Write(chunk); err != nil {
				break
			}
			w.(http.Flusher).Flush()
			n += len(chunk)
			if n > 1<<30 {
				break
			}
		}
		sent <- n
	})
	start := time.Now()
	r := e.do(http.MethodGet, blobPath("team/app", d))
	if r.StatusCode == http.StatusOK && r.readErr == nil {
		t.Fatalf("a complete 200 response of %d bytes", len(r.body))
	}
	n := <-sent
	t.Logf("client: %d, %d bytes, %v; upstream wrote %d bytes before the proxy hung up, after %v", r.StatusCode, len(r.body), r.readErr, n, time.Since(start).Round(time.Millisecond))
	if n > 16<<20 {
		t.Errorf("the proxy read %d bytes of a %d-byte blob", n, len(content))
	}
	if len(r.body) > len(content) {
		t.Errorf("client received %d bytes of a %d-byte blob", len(r.body), len(content))
	}
	if committed(t, e.store, d) {
		t.Fatal("the endless body was cached")
	}
}
