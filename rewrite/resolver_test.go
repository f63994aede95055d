package rewrite

import (
	"context"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/distribution/reference"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestHTTPResolverAgainstRegistry resolves tags on a real distribution API
// implementation (go-containerregistry's in-memory registry) standing in for
// the proxy, with the image-prefix path the proxy serves.
func TestHTTPResolverAgainstRegistry(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")

	img, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := random.Index(64, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(mustTag(t, host+"/docker.io/library/nginx:1.27"), img); err != nil {
		t.Fatal(err)
	}
	// WriteIndex pushes the children too, as a registry requires.
	if err := remote.WriteIndex(mustTag(t, host+"/docker.io/library/nginx:multi"), idx); err != nil {
		t.Fatal(err)
	}
	imgDigest, _ := img.Digest()
	idxDigest, _ := idx.Digest()

	// The webhook reaches the proxy at another address than nodes do.
	res := &HTTPResolver{Endpoint: srv.URL}
	r := mustNew(t, Options{ProxyHost: "pullbroker.example:5000", Resolver: res})
	ctx := context.Background()

	got := r.Rewrite(ctx, "nginx:1.27")
	if want := "pullbroker.example:5000/docker.io/library/nginx:1.27@" + imgDigest.String(); got.Image != want || got.ResolveErr != nil {
		t.Errorf("Rewrite(nginx:1.27) = %+v, want %q", got, want)
	}
	// An index is pinned to the index, never to one platform's manifest.
	got = r.Rewrite(ctx, "nginx:multi")
	if want := "pullbroker.example:5000/docker.io/library/nginx:multi@" + idxDigest.String(); got.Image != want || got.ResolveErr != nil {
		t.Errorf("Rewrite(nginx:multi) = %+v, want %q", got, want)
	}
	got = r.Rewrite(ctx, "nginx:missing")
	if want := "pullbroker.example:5000/docker.io/library/nginx:missing"; got.Image != want || got.ResolveErr == nil {
		t.Errorf("Rewrite(nginx:missing) = %+v, want %q with a resolve error", got, want)
	}
}

func TestHTTPResolverRequest(t *testing.T) {
	var seen *http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r
		switch r.URL.Path {
		case "/v2/docker.io/library/nginx/manifests/1.27":
			w.Header().Set("Docker-Content-Digest", testSum)
		case "/v2/docker.io/library/nginx/manifests/nodigest":
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	res := &HTTPResolver{Endpoint: srv.URL + "/", Header: http.Header{"Authorization": {"Bearer t"}}}

	ref := mustTagged(t, "pullbroker.example:5000/docker.io/library/nginx:1.27")
	d, err := res.Resolve(context.Background(), ref)
	if err != nil || d.String() != testSum {
		t.Fatalf("Resolve = %q, %v; want %s", d, err, testSum)
	}
	if seen.Method != http.MethodHead || seen.Header.Get("Authorization") != "Bearer t" ||
		!strings.HasPrefix(seen.Header.Get("Accept"), "application/vnd.oci.image.index.v1+json") {
		t.Errorf("request = %s %s %v", seen.Method, seen.URL, seen.Header)
	}
	for _, tag := range []string{"nodigest", "missing"} {
		if d, err := res.Resolve(context.Background(), mustTagged(t, "p.example/docker.io/library/nginx:"+tag)); err == nil {
			t.Errorf("Resolve(%s) = %s, want an error", tag, d)
		}
	}
	// Without an endpoint the reference's own host is asked, over https.
	u, _ := url.Parse(srv.URL)
	if _, err := (&HTTPResolver{}).Resolve(context.Background(), mustTagged(t, u.Host+"/docker.io/library/nginx:1.27")); err == nil {
		t.Error("an https request to a plain-http server succeeded")
	}
}

func mustTag(t *testing.T, s string) name.Tag {
	t.Helper()
	tag, err := name.NewTag(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return tag
}

func mustTagged(t *testing.T, s string) reference.NamedTagged {
	t.Helper()
	named, err := reference.ParseNamed(s)
	if err != nil {
		t.Fatal(err)
	}
	return named.(reference.NamedTagged)
}
