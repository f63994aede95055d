package proxy

import (
	"net/http/httptest"
	"net/url"
	"testing"
)

// TestPageUpstreamTags: an upstream that ignores n and last (distribution 2.8 does, and lists in
// storage order) still gives clients lexically ordered, paged lists; one that pages itself is left
// as it paged. The list is named as the client named the repository (here in the prefix form),
// not as the upstream did; a body that is not a tag list is refused.
func TestPageUpstreamTags(t *testing.T) {
	rt := &route{registry: "upstream.test", repository: "team/app", name: "upstream.test/team/app"}
	unpaged := `{"name":"upstream.test/team/app","tags":["v1","multi","multi-linux-arm64","multi-linux-amd64"]}`
	for _, tc := range []struct {
		name, body, query string
		want, next        string
	}{
		{name: "sorted, no paging", body: `{"name":"upstream.test/team/app","tags":["a","b"]}`, want: `{"name":"upstream.test/team/app","tags":["a","b"]}`},
		{name: "unsorted: sorted", body: unpaged, want: `{"name":"upstream.test/team/app","tags":["multi","multi-linux-amd64","multi-linux-arm64","v1"]}`},
		{name: "last ignored upstream", body: unpaged, query: "last=multi-linux-amd64", want: `{"name":"upstream.test/team/app","tags":["multi-linux-arm64","v1"]}`},
		{name: "n ignored upstream", body: unpaged, query: "n=2", want: `{"name":"upstream.test/team/app","tags":["multi","multi-linux-amd64"]}`, next: "multi-linux-amd64"},
		{name: "n and last", body: unpaged, query: "n=1&last=multi", want: `{"name":"upstream.test/team/app","tags":["multi-linux-amd64"]}`, next: "multi-linux-amd64"},
		{name: "already paged upstream", body: `{"name":"team/app","tags":["c","d"]}`, query: "n=2&last=b", want: `{"name":"upstream.test/team/app","tags":["c","d"]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q, _ := url.ParseQuery(tc.query)
			got, next, apiErr := pageUpstreamTags(rt, []byte(tc.body), q)
			if apiErr != nil {
				t.Fatal(apiErr)
			}
			if string(got) != tc.want || next != tc.next {
				t.Errorf("got %s next %q, want %s next %q", got, next, tc.want, tc.next)
			}
		})
	}
	if _, _, apiErr := pageUpstreamTags(rt, []byte(unpaged), url.Values{"n": {"-1"}}); apiErr == nil {
		t.Error("n=-1 accepted")
	}
	for _, body := range []string{`not json`, `<html>login</html>`, `["a"]`} {
		if _, _, apiErr := pageUpstreamTags(rt, []byte(body), nil); apiErr == nil || apiErr.status != 502 {
			t.Errorf("tag list %q: %v, want 502", body, apiErr)
		}
	}
	r := httptest.NewRequest("GET", "/v2/team/app/tags/list?n=2&ns=upstream.test&evil=1", nil)
	if got, want := ownNextLink(r, "b"), `</v2/team/app/tags/list?last=b&n=2&ns=upstream.test>; rel="next"`; got != want {
		t.Errorf("ownNextLink = %s, want %s", got, want)
	}
}
