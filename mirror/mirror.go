// Package mirror seeds the cache ahead of time and moves images across an
// air gap: sync pulls a list of images through the proxy into the cache
// and pins them; export writes cached images to an OCI image layout;
// import loads a layout into the cache, verifying every digest.
package mirror

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/pullbroker/pullbroker/tags"
)

// loopbackProxy serves the registry API handler on an ephemeral loopback port, so
// sync and export reuse the whole request path (verified fills, pins,
// offline rules) through go-containerregistry's ordinary client. The
// handler given is the proxy's in-process one, which skips client access
// rules; a random token keeps other local processes off that port.
type loopbackProxy struct {
	srv       *http.Server
	host      string
	transport http.RoundTripper
}

func startLoopback(h http.Handler) (*loopbackProxy, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	auth := "Bearer " + hex.EncodeToString(b[:])
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("starting the in-process proxy: %w", err)
	}
	guarded := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte(auth)) != 1 {
			http.Error(w, "not this process's client", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
	srv := &http.Server{Handler: guarded, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return &loopbackProxy{srv: srv, host: ln.Addr().String(), transport: withHeader{"Authorization", auth}}, nil
}

// withHeader sets a header on every request it sends.
type withHeader struct{ name, value string }

func (t withHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set(t.name, t.value)
	return http.DefaultTransport.RoundTrip(r)
}

// closeWait bounds how long Close waits for requests still being answered.
const closeWait = 10 * time.Second

// Close stops the proxy once the requests it is answering are done, so
// that nothing this run started still writes to the cache after the run
// returned.
func (l *loopbackProxy) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), closeWait)
	defer cancel()
	if l.srv.Shutdown(ctx) != nil {
		_ = l.srv.Close()
	}
}

// reference names img on the loopback proxy in the image-prefix form.
func (l *loopbackProxy) reference(img tags.Image) (name.Reference, error) {
	base := l.host + "/" + img.Registry + "/" + img.Repository
	if img.Digest != "" {
		return name.NewDigest(base+"@"+img.Digest.String(), name.Insecure)
	}
	return name.NewTag(base+":"+img.Tag, name.Insecure)
}

func (l *loopbackProxy) get(ctx context.Context, img tags.Image) (*remote.Descriptor, error) {
	ref, err := l.reference(img)
	if err != nil {
		return nil, err
	}
	return remote.Get(ref, remote.WithContext(ctx), remote.WithTransport(l.transport))
}

// Platform is "os/arch[/variant]".
type Platform = string

func platformMatches(p *v1.Platform, wanted []Platform) bool {
	if len(wanted) == 0 {
		return true
	}
	if p == nil {
		return false
	}
	for _, w := range wanted {
		wp, err := v1.ParsePlatform(w)
		if err == nil && p.Satisfies(*wp) {
			return true
		}
	}
	return false
}

var errNoPlatform = errors.New("no manifest in the index matches the requested platforms")
