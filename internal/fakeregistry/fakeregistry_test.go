package fakeregistry

import (
	"io"
	"net/http"
	"testing"
)

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

// TestBlobsBelongToRepositories: a pushed blob is served in the
// repositories it was pushed to only.
func TestBlobsBelongToRepositories(t *testing.T) {
	f := New(t)
	img := f.PushRandom("team/a", "v1")
	layers, _ := img.Layers()
	d, _ := layers[0].Digest()
	if resp, _ := get(t, f.URL()+"/v2/team/a/blobs/"+d.String()); resp.StatusCode != http.StatusOK {
		t.Errorf("blob in its repository: %d", resp.StatusCode)
	}
	resp, body := get(t, f.URL()+"/v2/team/b/blobs/"+d.String())
	if code, _, err := ParseError(body); resp.StatusCode != http.StatusNotFound || err != nil || code != "BLOB_UNKNOWN" {
		t.Errorf("blob in another repository: %d %s", resp.StatusCode, body)
	}
	f.Push("team/b", "v1", img)
	if resp, _ := get(t, f.URL()+"/v2/team/b/blobs/"+d.String()); resp.StatusCode != http.StatusOK {
		t.Errorf("blob once pushed to team/b: %d", resp.StatusCode)
	}
	if got := f.Count(http.MethodGet, "/blobs/"); got != 3 {
		t.Errorf("Count = %d, want 3", got)
	}
	if got := f.Count("", "/team/b/"); got != 2 {
		t.Errorf("Count of any method = %d, want 2", got)
	}
}

// TestTagPagination: a page cut short by n links the next one, absolutely.
func TestTagPagination(t *testing.T) {
	f := New(t)
	img := f.PushRandom("team/app", "a")
	for _, tag := range []string{"b", "c"} {
		f.Push("team/app", tag, img)
	}
	resp, body := get(t, f.URL()+"/v2/team/app/tags/list?n=2")
	if want := `<` + f.URL() + `/v2/team/app/tags/list?last=b&n=2>; rel="next"`; resp.Header.Get("Link") != want {
		t.Errorf("Link %q, want %q", resp.Header.Get("Link"), want)
	}
	if string(body) != `{"name":"team/app","tags":["a","b"]}` {
		t.Errorf("page 1: %s", body)
	}
	resp, body = get(t, f.URL()+"/v2/team/app/tags/list?n=2&last=b")
	if resp.Header.Get("Link") != "" || string(body) != `{"name":"team/app","tags":["c"]}` {
		t.Errorf("page 2: Link %q, %s", resp.Header.Get("Link"), body)
	}
	if resp, _ := get(t, f.URL()+"/v2/team/absent/tags/list?n=2"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown repository: %d", resp.StatusCode)
	}
	if f.Pings() != 0 || f.Total() != 3 {
		t.Errorf("Pings %d, Total %d; want 0 and 3", f.Pings(), f.Total())
	}
}
