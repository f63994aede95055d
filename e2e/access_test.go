package e2e

import (
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestClientAccessRules is issue 3's "who may pull" with real clients. Loopback is outside the
// allowed network, so every client here must present a pullbroker client credential (an htpasswd
// user or a static bearer token), and the upstream serves only team/* although pullbroker's
// credential can read more.
func TestClientAccessRules(t *testing.T) {
	f := newFixture(t)
	client := testenv.BasicAuth{Username: "dev", Password: randomSecret("client-password")}
	token := randomSecret("client-token")
	f.secrets.add("client password", client.Password, client.Username)
	f.secrets.add("client token", token, "")
	dir := t.TempDir()
	htpasswd, err := exec.Command("htpasswd", "-Bbn", client.Username, client.Password).Output()
	if err != nil {
		t.Fatalf("htpasswd: %v", err)
	}
	writeFile(t, filepath.Join(dir, "htpasswd"), string(htpasswd))
	writeFile(t, filepath.Join(dir, "tokens"), token+"\n")
	testenv.PushTestImage(t, f.upstream.Addr, "other/app", "v1", 1, 1024, &f.auth)

	up := f.upstreamConfig("")
	up.Repositories = []string{"team/*"}
	pb := f.startPullbroker(pbConfig{
		Upstreams: []upstreamConfig{up},
		Access: fmt.Sprintf("  allowedNetworks: [\"10.0.0.0/8\"]\n  htpasswdFile: %q\n  tokensFile: %q",
			filepath.Join(dir, "htpasswd"), filepath.Join(dir, "tokens")),
	})
	ref := pb.ref(appRepo + ":" + appTag)

	t.Run("anonymous refused", func(t *testing.T) {
		out, err := testenv.TrySkopeo(t, "inspect", "--raw", "--tls-verify=false", "docker://"+ref)
		if err == nil {
			t.Fatal("an anonymous skopeo pulled through pullbroker")
		}
		if msg := out + err.Error(); !strings.Contains(strings.ToLower(msg), "unauthorized") && !strings.Contains(msg, "401") {
			t.Errorf("anonymous refusal does not say unauthorized: %s %v", out, err)
		}
		resp, _ := get(t, http.DefaultClient, pb.url("/v2/"))
		if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
			t.Errorf("GET /v2/ anonymously: %s, challenge %q", resp.Status, resp.Header.Get("WWW-Authenticate"))
		}
	})

	t.Run("wrong password refused", func(t *testing.T) {
		wrong := client
		wrong.Password = "not-" + client.Password[:8]
		if _, err := testenv.TrySkopeo(t, "inspect", "--raw", "--tls-verify=false", "--creds", wrong.String(), "docker://"+ref); err == nil {
			t.Fatal("a wrong client password pulled")
		}
	})

	t.Run("htpasswd user pulls", func(t *testing.T) {
		if got := testenv.CraneAs(t, pb.Addr, client, "digest", "--insecure", ref); got != f.appDigest {
			t.Fatalf("crane digest as %s = %s, want %s", client.Username, got, f.appDigest)
		}
		dir := t.TempDir()
		testenv.Skopeo(t, "copy", "--src-tls-verify=false", "--preserve-digests", "--src-creds", client.String(), "docker://"+ref, "dir:"+dir)
	})

	t.Run("bearer token pulls", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodHead, pb.url("/v2/"+upstreamName+"/"+appRepo+"/manifests/"+appTag), nil)
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Docker-Content-Digest") != f.appDigest {
			t.Fatalf("HEAD with the client token: %s, digest %s", resp.Status, resp.Header.Get("Docker-Content-Digest"))
		}
	})

	t.Run("repository outside the upstream's globs denied", func(t *testing.T) {
		out, err := testenv.TrySkopeo(t, "inspect", "--raw", "--tls-verify=false", "--creds", client.String(), "docker://"+pb.ref("other/app:v1"))
		if err == nil {
			t.Fatal("other/app was served although the upstream allows only team/*")
		}
		if msg := out + err.Error(); !strings.Contains(strings.ToLower(msg), "denied") {
			t.Errorf("refusal does not say denied: %s %v", out, err)
		}
	})
}
