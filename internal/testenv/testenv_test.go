package testenv

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/service/s3"
)

// TestToolchain drives every client straight against docker-registry, no proxy in between: if this
// fails, an e2e failure elsewhere is about the environment, not pullbroker.
func TestToolchain(t *testing.T) {
	auth := &BasicAuth{Username: "alice", Password: "wonderland"}
	addr := StartDockerRegistry(t, RegistryOptions{Auth: auth})
	digest := PushTestImage(t, addr, "team/app", "v1", 3, 256<<10, auth)
	ref := addr + "/team/app:v1"

	t.Run("htpasswd", func(t *testing.T) {
		if _, err := TryCrane(t, "digest", "--insecure", ref); err == nil {
			t.Fatal("anonymous crane digest succeeded; the registry should demand credentials")
		}
		if got := CraneAs(t, addr, *auth, "digest", "--insecure", ref); got != digest {
			t.Fatalf("crane digest = %s, pushed %s", got, digest)
		}
	})

	t.Run("image", func(t *testing.T) {
		var manifest struct {
			Layers []json.RawMessage `json:"layers"`
		}
		raw := CraneAs(t, addr, *auth, "manifest", "--insecure", ref)
		if err := json.Unmarshal([]byte(raw), &manifest); err != nil || len(manifest.Layers) != 3 {
			t.Fatalf("manifest %s: %d layers, err %v; want 3", raw, len(manifest.Layers), err)
		}
	})

	t.Run("skopeo", func(t *testing.T) {
		out := t.TempDir()
		Skopeo(t, "copy", "--src-tls-verify=false", "--src-creds", auth.String(), "docker://"+ref, "dir:"+out)
		manifest, err := os.ReadFile(filepath.Join(out, "manifest.json"))
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("sha256:%x", sha256.Sum256(manifest)); got != digest {
			t.Fatalf("skopeo copied manifest %s, pushed %s", got, digest)
		}
	})

	t.Run("containerd", func(t *testing.T) {
		socket := StartContainerd(t)
		Ctr(t, socket, "images", "pull", "--plain-http", "--user", auth.String(), ref)
		if images := Ctr(t, socket, "images", "ls"); !strings.Contains(images, digest) {
			t.Fatalf("ctr images ls does not show %s:\n%s", digest, images)
		}
	})

	t.Run("podman", func(t *testing.T) {
		store := NewPodmanStore(t)
		Podman(t, store, "pull", "--tls-verify=false", "--creds", auth.String(), ref)
		if got := Podman(t, store, "image", "inspect", "--format", "{{.Digest}}", ref); got != digest {
			t.Fatalf("podman pulled %s, pushed %s", got, digest)
		}
	})

	t.Run("multi-arch", func(t *testing.T) {
		image := PushMultiArchIndex(t, addr, "team/multi", "v1", 1, 64<<10, auth)
		var index struct {
			Manifests []struct {
				Digest   string `json:"digest"`
				Platform struct {
					OS           string `json:"os"`
					Architecture string `json:"architecture"`
				} `json:"platform"`
			} `json:"manifests"`
		}
		raw := CraneAs(t, addr, *auth, "manifest", "--insecure", addr+"/team/multi@"+image.Digest)
		if err := json.Unmarshal([]byte(raw), &index); err != nil {
			t.Fatal(err)
		}
		if len(index.Manifests) != len(MultiArchPlatforms) {
			t.Fatalf("index has %d manifests, want %d: %s", len(index.Manifests), len(MultiArchPlatforms), raw)
		}
		for _, m := range index.Manifests {
			platform := m.Platform.OS + "/" + m.Platform.Architecture
			if image.Platforms[platform] != m.Digest {
				t.Errorf("index lists %s for %s, pushed %s", m.Digest, platform, image.Platforms[platform])
			}
		}
	})
}

// TestSecondLoopbackAddress checks what blob-redirect tests rely on: 127.0.0.2 is a host of its own
// on lo (Linux routes all of 127/8 there), also inside scripts/test.sh's network namespace.
func TestSecondLoopbackAddress(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatalf("listen on 127.0.0.2: %v", err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatalf("dial %s: %v", l.Addr(), err)
	}
	c.Close()
}

// TestPinnedTools checks that the binaries built from source run at all.
func TestPinnedTools(t *testing.T) {
	if out := Crane(t, "version"); out == "" {
		t.Error("crane version printed nothing")
	}
	if _, err := os.Stat(ConformanceBinary(t)); err != nil {
		t.Error(err)
	}
	assets := KubeAssets(t)
	for _, bin := range []string{"etcd", "kube-apiserver"} {
		if _, err := runTool(exec.Command(filepath.Join(assets, bin), "--version")); err != nil {
			t.Error(err)
		}
	}
}

func TestParseImagePulls(t *testing.T) {
	log := `{"level":"info","msg":"starting containerd","time":"2026-12-06T20:00:00Z"}
{"level":"info","msg":"PullImage \"docker.io/library/a:v1\"","time":"2026-12-06T20:00:01.000Z"}
{"level":"info","msg":"PullImage \"docker.io/library/b:v1\"","time":"2026-12-06T20:00:01.100Z"}
{"level":"info","msg":"ImageUpdate event","time":"2026-12-06T20:00:01.150Z"}
{"level":"info","msg":"PullImage \"docker.io/library/a:v1\" returns image reference \"sha256:aa\"","time":"2026-12-06T20:00:01.250Z"}
{"error":"failed to resolve reference: 503 Service Unavailable","level":"error","msg":"PullImage \"docker.io/library/b:v1\" failed","time":"2026-12-06T20:00:01.600Z"}
{"level":"info","msg":"PullImage \"docker.io/library/a:v1\"","time":"2026-12-06T20:00:02.000Z"}
not json
`
	got := parseImagePulls(log)
	if len(got) != 2 {
		t.Fatalf("got %d pulls, want 2 (the third has not ended): %+v", len(got), got)
	}
	if got[0].Image != "docker.io/library/a:v1" || got[0].Duration != 250*time.Millisecond || got[0].Err != "" {
		t.Errorf("first pull %+v, want a:v1 in 250ms", got[0])
	}
	if got[1].Image != "docker.io/library/b:v1" || got[1].Duration != 500*time.Millisecond || !strings.Contains(got[1].Err, "503") {
		t.Errorf("second pull %+v, want b:v1 failed after 500ms with the 503", got[1])
	}
}

func TestStartS3(t *testing.T) {
	s := StartS3(t)
	c := s.Client(t)
	if _, err := c.PutObject(&s3.PutObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String("a/b"), Body: strings.NewReader("x")}); err != nil {
		t.Fatal(err)
	}
	if keys := s.Keys(t); len(keys) != 1 || keys[0] != "a/b" {
		t.Fatalf("keys = %v", keys)
	}
	if ops := s.Operations(t); ops["CreateBucket"] != 1 || ops["PutObject"] != 1 || ops["ListObjectsV2"] != 1 {
		t.Fatalf("operations = %v", ops)
	}
}

func TestStartFakeGCS(t *testing.T) {
	s := StartFakeGCS(t)
	if got := os.Getenv("STORAGE_EMULATOR_HOST"); got != s.Endpoint {
		t.Fatalf("STORAGE_EMULATOR_HOST = %q, want %q", got, s.Endpoint)
	}
	resp, err := http.Post(s.Endpoint+"/upload/storage/v1/b/"+s.Bucket+"/o?uploadType=media&name=a/b", "text/plain", strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("upload: %s", resp.Status)
	}
	if keys := s.Keys(t); len(keys) != 1 || keys[0] != "a/b" {
		t.Fatalf("keys = %v", keys)
	}
}

func TestStartAzurite(t *testing.T) {
	s := StartAzurite(t)
	if _, err := s.Client(t).UploadBuffer(t.Context(), s.Container, "a/b", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if keys := s.Keys(t); len(keys) != 1 || keys[0] != "a/b" {
		t.Fatalf("keys = %v", keys)
	}
}
