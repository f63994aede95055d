package mirror

import (
	"net/http"
	"testing"
)

// TestLoopbackRefusesOtherLocalClients: the in-process proxy's port skips
// client access rules, so only this process's own client, holding the
// random token, may use it.
func TestLoopbackRefusesOtherLocalClients(t *testing.T) {
	served := false
	lp, err := startLoopback(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { served = true }))
	if err != nil {
		t.Fatal(err)
	}
	defer lp.Close()
	for _, auth := range []string{"", "Bearer guess"} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+lp.host+"/v2/", nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("Authorization %q: status %d, want 401", auth, resp.StatusCode)
		}
	}
	if served {
		t.Fatal("a request without the token reached the handler")
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+lp.host+"/v2/", nil)
	resp, err := (&http.Client{Transport: lp.transport}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !served {
		t.Fatalf("this process's client: status %d, served %v", resp.StatusCode, served)
	}
}
