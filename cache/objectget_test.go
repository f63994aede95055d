package cache

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"
)

// A GET of an object over a connection of its own, as a client of
// pullbroker receives it: the body spliced into the client's response.
func TestDirectGet(t *testing.T) {
	content := randomBytes(t, 3<<20+17)
	storage := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/object":
			http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
		case "/cut":
			// Announces the whole object, sends half, and hangs up.
			w.Header().Set("Content-Length", strconv.Itoa(len(content)))
			w.Write(content[:len(content)/2])
			panic(http.ErrAbortHandler)
		case "/chunked":
			w.Write(content[:100])
			w.(http.Flusher).Flush()
			w.Write(content[100:])
		default:
			http.NotFound(w, r)
		}
	}))
	defer storage.Close()

	// serve answers a client with what a direct GET of path from offset
	// gives, as proxy.serveCachedBlob does.
	serve := func(path string, offset int64) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			length := int64(len(content)) - offset
			body, err := openDirectGet(r.Context(), storage.URL+path, offset, length)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			defer body.Close()
			w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
			if _, err := body.writeTo(w); err != nil {
				panic(http.ErrAbortHandler)
			}
		}))
	}
	get := func(srv *httptest.Server) (*http.Response, []byte, error) {
		defer srv.Close()
		resp, err := http.Get(srv.URL)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		return resp, got, err
	}

	for _, offset := range []int64{0, 5, 2 << 20} {
		resp, got, err := get(serve("/object", offset))
		if err != nil {
			t.Fatalf("offset %d: %v", offset, err)
		}
		if resp.StatusCode != http.StatusOK || !bytes.Equal(got, content[offset:]) {
			t.Fatalf("offset %d: status %d, %d bytes, equal %v", offset, resp.StatusCode, len(got), bytes.Equal(got, content[offset:]))
		}
	}

	_, got, err := get(serve("/cut", 0))
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("a cut object reached the client as %d bytes and %v, want io.ErrUnexpectedEOF", len(got), err)
	}

	for _, path := range []string{"/chunked", "/missing"} {
		resp, _, err := get(serve(path, 0))
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusBadGateway {
			t.Fatalf("%s: status %d, want the direct GET refused", path, resp.StatusCode)
		}
	}
	if _, err := openDirectGet(t.Context(), "https"+storage.URL[len("http"):]+"/object", 0, int64(len(content))); err == nil {
		t.Fatal("an https URL was read directly")
	}
}
