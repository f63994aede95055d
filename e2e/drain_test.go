package e2e

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestSIGTERMDrain (issue 2): SIGTERM in the middle of a blob pull from a slow upstream lets the
// pull finish with every byte and the right digest, refuses new connections meanwhile, and the
// process then exits 0.
func TestSIGTERMDrain(t *testing.T) {
	const (
		blobSize = 8 << 20
		rate     = 2 << 20 // bytes per second: about four seconds for the blob
	)
	f := newFixture(t)
	manifestDigest := testenv.PushTestImage(t, f.upstream.Addr, "team/big", "v1", 1, blobSize, &f.auth)
	layer := parseManifest(t, f.upstreamManifest("team/big@"+manifestDigest)).Layers[0]

	slow := newUpstreamProxy(t, f.upstream.Addr)
	slow.bytesPerSecond.Store(rate)
	pb := f.startPullbroker(pbConfig{Upstreams: []upstreamConfig{f.upstreamConfig(slow.endpoint())}})

	resp, err := http.Get(pb.url("/v2/" + upstreamName + "/team/big/blobs/" + layer.Digest))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET blob: %s", resp.Status)
	}
	h := sha256.New()
	got, err := io.CopyN(h, resp.Body, 1<<20)
	if err != nil {
		t.Fatalf("first MiB of the blob: %v", err)
	}

	sigterm := time.Now()
	if err := pb.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// The listener closes at once: a new client is refused while the pull drains.
	refused := false
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", pb.Addr, time.Second)
		if err != nil {
			refused = true
			break
		}
		c.Close()
	}
	if !refused {
		t.Error("pullbroker still accepts new connections 2s after SIGTERM")
	}
	if pb.Exited() {
		t.Fatalf("pullbroker exited %v after SIGTERM with a pull in flight: %v", time.Since(sigterm), pb.Err())
	}

	n, err := io.Copy(h, resp.Body)
	got += n
	if err != nil {
		t.Fatalf("the pull in flight at SIGTERM broke after %d bytes: %v", got, err)
	}
	if d := fmt.Sprintf("sha256:%x", h.Sum(nil)); got != layer.Size || d != layer.Digest {
		t.Fatalf("pull across SIGTERM got %d bytes %s, want %d bytes %s", got, d, layer.Size, layer.Digest)
	}
	finished := time.Since(sigterm)

	select {
	case <-pb.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("pullbroker still running 30s after the drained pull finished")
	}
	var exit *exec.ExitError
	if pb.Err() != nil && (!errors.As(pb.Err(), &exit) || exit.ExitCode() != 0) {
		t.Fatalf("pullbroker exited with %v after draining, want status 0", pb.Err())
	}
	t.Logf("SIGTERM after 1 MiB of %d; the pull finished %v later with the right digest; exit status 0 after %v",
		layer.Size, finished.Round(time.Millisecond), time.Since(sigterm).Round(time.Millisecond))
	if log := pb.logs(t); !strings.Contains(log, "draining in-flight requests") {
		t.Error("pullbroker's log does not mention draining")
	}
}
