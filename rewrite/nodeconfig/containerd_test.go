package nodeconfig

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullbroker/pullbroker/config"
	"github.com/pullbroker/pullbroker/internal/testenv"
)

// nsRecorder is a stand-in for the proxy: an in-memory registry that
// ignores ?ns= (it serves the repository path as given) and records every
// request's path and ns.
type nsRecorder struct {
	http.Handler
	mu       sync.Mutex
	requests []string
}

func (r *nsRecorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.requests = append(r.requests, req.Method+" "+req.URL.Path+" ns="+req.URL.Query().Get("ns"))
	r.mu.Unlock()
	r.Handler.ServeHTTP(w, req)
}

func (r *nsRecorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.requests
	r.requests = nil
	return out
}

// TestContainerdPullsThroughHostsToml has containerd (ctr --hosts-dir, the
// same resolver code the CRI plugin uses) pull with the files ContainerdHosts
// writes, in both fallback modes, with the upstream on a dead port: a pull
// that succeeds came from the mirror, and containerd named the registry in
// ?ns=. The proxy itself is stood in for by an in-memory registry; the
// end-to-end test with `pullbroker serve` is in e2e/.
func TestContainerdPullsThroughHostsToml(t *testing.T) {
	socket := testenv.StartContainerd(t)

	mirror := &nsRecorder{Handler: ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mirror, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	mirrorAddr := ln.Addr().String()

	// The mirror form carries no registry in the path: library/busybox for
	// docker.io, team/app for the registry with a port.
	for _, repo := range []string{"library/busybox:1", "team/app:2"} {
		img, err := random.Image(256, 1)
		if err != nil {
			t.Fatal(err)
		}
		ref, _ := name.NewTag(mirrorAddr+"/"+repo, name.Insecure)
		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}
	}
	mirror.take()

	dead := fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
	upstreams := []config.Upstream{
		{Name: "docker.io", Aliases: []string{"index.docker.io"}, Endpoint: dead},
		{Name: "registry.example.com:5000", Endpoint: dead},
	}
	for _, noFallback := range []bool{false, true} {
		t.Run(fmt.Sprintf("noFallback=%v", noFallback), func(t *testing.T) {
			files, err := ContainerdHosts(Options{ProxyURL: "http://" + mirrorAddr, Upstreams: upstreams, NoFallback: noFallback, DialTimeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := WriteFiles(dir, files); err != nil {
				t.Fatal(err)
			}
			for image, ns := range map[string]string{
				"docker.io/library/busybox:1":          "docker.io",
				"registry.example.com:5000/team/app:2": "registry.example.com:5000",
			} {
				testenv.Ctr(t, socket, "images", "pull", "--hosts-dir", dir, image)
				requests := mirror.take()
				if len(requests) == 0 {
					t.Fatalf("pulling %s sent nothing to the mirror", image)
				}
				for _, r := range requests {
					if !strings.HasSuffix(r, " ns="+ns) {
						t.Errorf("pulling %s: request %q lacks ns=%s", image, r, ns)
					}
				}
				testenv.Ctr(t, socket, "images", "rm", image)
			}

			// Not on the mirror: the fallback goes to the dead upstream, or
			// (no fallback) to the mirror once more. Either way it fails.
			if _, err := testenv.TryCtr(t, socket, "images", "pull", "--hosts-dir", dir, "docker.io/library/missing:1"); err == nil {
				t.Error("pulling an image neither mirror nor upstream has succeeded")
			}
			requests := mirror.take()
			if noFallback && len(requests) < 2 {
				t.Errorf("without fallback the proxy is also the server, so it should be asked twice: %q", requests)
			}
		})
	}
}
