package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestNoSecretLeaks (issue 3): pulls by every client, error paths and the admin API, run with
// known secret values (the upstream password, a wrong password of a second upstream that the
// registry refuses, the admin token); then every response relayed to the clients (status,
// headers, body), every admin response, /metrics, every pullbroker log line and every CLI output
// is searched for each secret, raw, base64 and as Basic credentials. None may hold one.
// (Every other test of the package also searches its pullbroker logs and CLI outputs.)
func TestNoSecretLeaks(t *testing.T) {
	f := newFixture(t)
	wrong := randomSecret("wrong-password")
	f.secrets.add("wrong upstream password", wrong, robotUser)
	wrongFile := filepath.Join(t.TempDir(), "wrong-password")
	writeFile(t, wrongFile, wrong)
	pb := f.startPullbroker(pbConfig{Upstreams: []upstreamConfig{
		f.upstreamConfig(""),
		{Name: "wrong.test", Endpoint: "http://" + f.upstream.Addr, Username: robotUser, PasswordFile: wrongFile},
	}})
	tap := newTapProxy(t, f.secrets, pb.Addr)
	tapRef := func(ref string) string { return tap.addr() + "/" + upstreamName + "/" + ref }
	images := f.images()

	t.Run("clients", func(t *testing.T) {
		for _, ref := range sortedKeys(images) {
			skopeoPull(t, tapRef(ref), images[ref])
			cranePull(t, tapRef(ref), images[ref])
		}
		socket := testenv.StartContainerd(t)
		hostsDir := mirrorHostsDir(t, tap.addr())
		for _, ref := range sortedKeys(images) {
			ctrPullPrefix(t, socket, tapRef(ref), images[ref])
			ctrPullMirror(t, socket, hostsDir, ref, images[ref])
		}
		// A client's failed pull: the upstream refuses pullbroker's wrong credential.
		if _, err := testenv.TrySkopeo(t, "inspect", "--raw", "--tls-verify=false", "docker://"+tap.addr()+"/wrong.test/"+appRepo+":"+appTag); err == nil {
			t.Error("a pull through the upstream with the wrong password succeeded")
		} else {
			f.secrets.check(t, "skopeo's error", []byte(err.Error()))
		}
	})

	t.Run("registry API error paths", func(t *testing.T) {
		layer := parseManifest(t, f.upstreamManifest(appRepo+"@"+f.appDigest)).Layers[0].Digest
		client := &http.Client{Timeout: 30 * time.Second}
		statuses := map[int]int{}
		for _, req := range []struct{ method, path, auth string }{
			{"GET", "/v2/", ""},
			{"GET", "/v2/_catalog", ""},
			{"GET", "/v2/" + upstreamName + "/" + appRepo + "/tags/list?n=1", ""},
			{"GET", "/v2/" + upstreamName + "/" + appRepo + "/manifests/missing", ""},
			{"GET", "/v2/" + upstreamName + "/team/nothing/manifests/v1", ""},
			{"GET", "/v2/" + upstreamName + "/" + appRepo + "/blobs/sha256:bad", ""},
			{"GET", "/v2/" + upstreamName + "/" + appRepo + "/blobs/" + digestOf([]byte("missing")), ""},
			{"GET", "/v2/" + upstreamName + "/" + appRepo + "/referrers/" + f.appDigest, ""},
			{"GET", "/v2/wrong.test/" + appRepo + "/manifests/" + appTag, ""},
			{"HEAD", "/v2/wrong.test/" + appRepo + "/manifests/" + appTag, ""},
			{"GET", "/v2/wrong.test/" + appRepo + "/manifests/" + f.appDigest, ""},
			{"GET", "/v2/wrong.test/" + appRepo + "/blobs/" + layer, ""},
			{"GET", "/v2/wrong.test/" + appRepo + "/tags/list", ""},
			{"GET", "/v2/unknown.example/" + appRepo + "/manifests/" + appTag, ""},
			{"GET", "/v2/" + appRepo + "/manifests/" + appTag, ""},
			{"POST", "/v2/" + upstreamName + "/" + appRepo + "/blobs/uploads/", ""},
			{"PUT", "/v2/" + upstreamName + "/" + appRepo + "/manifests/" + appTag, ""},
			{"DELETE", "/v2/" + upstreamName + "/" + appRepo + "/manifests/" + f.appDigest, ""},
			// A client that sends a secret of its own must not see it echoed or logged.
			{"GET", "/v2/" + upstreamName + "/" + appRepo + "/manifests/" + appTag, "Bearer " + f.adminToken},
			{"GET", "/v2/wrong.test/" + appRepo + "/manifests/" + appTag, "Basic " + basic(robotUser, f.auth.Password)},
		} {
			r, err := http.NewRequest(req.method, "http://"+tap.addr()+req.path, strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			if req.auth != "" {
				r.Header.Set("Authorization", req.auth)
			}
			resp, err := client.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses[resp.StatusCode]++
		}
		t.Logf("registry API requests by status: %v", statuses)
		if statuses[http.StatusForbidden] == 0 {
			t.Error("no request was refused with 403: the wrong-credential upstream path was not exercised")
		}
	})

	t.Run("admin API", func(t *testing.T) {
		client := &http.Client{Timeout: 30 * time.Second}
		admin := "http://" + pb.Admin
		image := upstreamName + "/" + appRepo + ":" + appTag
		for _, req := range []struct{ method, path, token, body string }{
			{"GET", "/api/v1/pins", "", ""},
			{"GET", "/api/v1/pins", "not-the-token", ""},
			{"GET", "/api/v1/pins", f.adminToken + "x", ""},
			{"PUT", "/api/v1/pins/" + image, f.adminToken, ""},
			{"GET", "/api/v1/pins", f.adminToken, ""},
			{"GET", "/api/v1/pins/" + image, f.adminToken, ""},
			{"POST", "/api/v1/refresh/" + image, f.adminToken, ""},
			{"PUT", "/api/v1/pins/wrong.test/" + appRepo + ":" + appTag, f.adminToken, ""},
			{"PUT", "/api/v1/pins/" + image, f.adminToken, `{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}`},
			{"DELETE", "/api/v1/pins/" + image, f.adminToken, ""},
			{"GET", "/healthz", "", ""},
			{"GET", "/readyz", "", ""},
			{"GET", "/metrics", "", ""},
		} {
			r, err := http.NewRequest(req.method, admin+req.path, strings.NewReader(req.body))
			if err != nil {
				t.Fatal(err)
			}
			if req.token != "" {
				r.Header.Set("Authorization", "Bearer "+req.token)
			}
			resp, err := client.Do(r)
			if err != nil {
				t.Fatal(err)
			}
			var captured bytes.Buffer
			fmt.Fprintf(&captured, "%s\n", resp.Status)
			_ = resp.Header.Write(&captured)
			_, _ = io.Copy(&captured, resp.Body)
			resp.Body.Close()
			f.secrets.check(t, fmt.Sprintf("admin response to %s %s (%s)", req.method, req.path, resp.Status), captured.Bytes())
		}
		out, err := tryCLI(t, f.secrets, "pin", "set", image, "--admin", admin, "--token-file", filepath.Join(t.TempDir(), "missing"))
		if err == nil {
			t.Errorf("pin set with a missing token file succeeded: %s", out)
		}
		runCLI(t, f.secrets, "pin", "set", image, "--admin", admin, "--token-file", f.adminTokenFile)
		runCLI(t, f.secrets, "pin", "export", "--admin", admin, "--token-file", f.adminTokenFile)
	})

	metrics := pb.metrics(t)
	f.secrets.check(t, "/metrics", []byte(metrics))
	tap.report(t)
	t.Logf("searched %d relayed responses (%d body bytes), %d lines of /metrics; the pullbroker log is searched at cleanup",
		tap.responses.Load(), tap.bodyBytes.Load(), strings.Count(metrics, "\n"))
}

func basic(user, password string) string {
	r, _ := http.NewRequest("GET", "http://x/", nil)
	r.SetBasicAuth(user, password)
	return strings.TrimPrefix(r.Header.Get("Authorization"), "Basic ")
}
