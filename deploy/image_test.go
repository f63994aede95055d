package deploy_test

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/pullbroker/pullbroker/internal/testenv"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestImageBuild runs deploy/image/release.sh (and so build.sh) against an
// in-memory registry on loopback: the base image comes from it (as it would
// through pullbroker) and the result goes back to it, for two platforms,
// tagged with the chart's appVersion.
func TestImageBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("cross-compiles the binary twice")
	}
	crane := testenv.Tool(t, "crane")
	for _, tool := range []string{"bash", "tar", "go"} {
		testenv.Tool(t, tool)
	}

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	host := strings.TrimPrefix(srv.URL, "http://")

	// A two-platform base, standing in for distroless/static.
	platforms := []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}
	var base v1.ImageIndex = empty.Index
	baseLayers := map[string]v1.Hash{}
	for _, p := range platforms {
		img, err := random.Image(512, 1)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		cf = cf.DeepCopy()
		cf.OS, cf.Architecture = p.OS, p.Architecture
		cf.Config.User = "65532:65532"
		if img, err = mutate.ConfigFile(img, cf); err != nil {
			t.Fatal(err)
		}
		layers, _ := img.Layers()
		baseLayers[p.Architecture], _ = layers[0].Digest()
		p := p
		base = mutate.AppendManifests(base, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &p}})
	}
	baseRef, err := name.ParseReference(host+"/distroless/static:nonroot", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.WriteIndex(baseRef, base); err != nil {
		t.Fatal(err)
	}

	release := appVersion(t)
	target := host + "/pullbroker/pullbroker:" + release
	cmd := exec.Command("bash", "image/release.sh", host+"/pullbroker")
	cmd.Env = append(os.Environ(),
		"CRANE="+crane,
		"INSECURE=1",
		"BASE_IMAGE="+baseRef.String(),
		"VERSION="+release,
		"SOURCE_DATE_EPOCH=1700000000",
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("build.sh: %v\n%s", err, stderr.String())
	}
	out := strings.TrimSpace(stdout.String())
	if !regexp.MustCompile(`^` + regexp.QuoteMeta(host+"/pullbroker/pullbroker") + `@sha256:[0-9a-f]{64}$`).MatchString(out) {
		t.Fatalf("build.sh printed %q, want the pushed digest reference", out)
	}

	ref, _ := name.ParseReference(target, name.Insecure)
	desc, err := remote.Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out, desc.Digest.String()) {
		t.Errorf("tag %s is %s, build.sh printed %s", target, desc.Digest, out)
	}
	if !desc.MediaType.IsIndex() {
		t.Fatalf("%s is %s, want an index for two platforms", target, desc.MediaType)
	}
	idx, _ := desc.ImageIndex()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	revision, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	wantMeta := map[string]string{
		"org.opencontainers.image.source":   "https://github.com/pullbroker/pullbroker",
		"org.opencontainers.image.revision": strings.TrimSpace(string(revision)),
		"org.opencontainers.image.version":  release,
		"org.opencontainers.image.created":  "2023-11-14T22:13:20Z",
	}
	checkMeta(t, "index annotations", im.Annotations, wantMeta)
	if len(im.Manifests) != 2 {
		t.Fatalf("index has %d manifests", len(im.Manifests))
	}
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for _, m := range im.Manifests {
		if m.Platform == nil {
			t.Fatalf("manifest %s has no platform", m.Digest)
		}
		arch := m.Platform.Architecture
		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != "linux" || cf.Architecture != arch {
			t.Errorf("%s: config platform %s/%s", arch, cf.OS, cf.Architecture)
		}
		if !slices.Equal(cf.Config.Entrypoint, []string{"/usr/local/bin/pullbroker"}) ||
			!slices.Equal(cf.Config.Cmd, []string{"serve"}) || cf.Config.User != "65532:65532" {
			t.Errorf("%s: entrypoint %q cmd %q user %q", arch, cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.User)
		}
		checkMeta(t, arch+" labels", cf.Config.Labels, wantMeta)
		if m, err := img.Manifest(); err != nil {
			t.Fatal(err)
		} else {
			checkMeta(t, arch+" annotations", m.Annotations, wantMeta)
		}
		if _, ok := cf.Config.ExposedPorts["5000/tcp"]; !ok {
			t.Errorf("%s: exposed ports %v", arch, cf.Config.ExposedPorts)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		if len(layers) != 2 {
			t.Fatalf("%s: %d layers, want the base's and the binary's", arch, len(layers))
		}
		if d, _ := layers[0].Digest(); d != baseLayers[arch] {
			t.Errorf("%s: first layer %s is not the %s base layer", arch, d, arch)
		}
		if mt, _ := layers[1].MediaType(); mt != types.DockerLayer && mt != types.OCILayer {
			t.Errorf("%s: binary layer media type %s, want a gzip layer", arch, mt)
		}
		bin := checkBinaryLayer(t, arch, layers[1], machines[arch])
		if arch == runtime.GOARCH {
			checkVersionOutput(t, bin, release, wantMeta["org.opencontainers.image.revision"])
		}
	}
}

func checkMeta(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: %s = %q, want %q", what, k, got[k], v)
		}
	}
}

// checkVersionOutput runs the binary from the image: the version and
// commit were linked in by the build.
func checkVersionOutput(t *testing.T, bin []byte, version, commit string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pullbroker")
	if err := os.WriteFile(path, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(path, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("pullbroker version: %v\n%s", err, out)
	}
	for _, want := range []string{"pullbroker " + version + "\n", "commit:     " + commit, "built:      2023-11-14T22:13:20Z"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("pullbroker version printed %q, lacks %q", out, want)
		}
	}
}

// checkBinaryLayer: the layer holds exactly the binary, root-owned,
// executable, statically linked for the platform, stripped. It returns the
// binary.
func checkBinaryLayer(t *testing.T, arch string, l v1.Layer, machine elf.Machine) []byte {
	t.Helper()
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	var bin []byte
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if h.Uid != 0 || h.Gid != 0 || h.Mode&0o777 != 0o755 || h.ModTime.Unix() != 1700000000 {
			t.Errorf("%s: %s uid %d gid %d mode %o mtime %v", arch, h.Name, h.Uid, h.Gid, h.Mode, h.ModTime)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		f, err := elf.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s: %s is not ELF: %v", arch, h.Name, err)
		}
		if f.Machine != machine {
			t.Errorf("%s: binary for %s", arch, f.Machine)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s: binary is dynamically linked (CGO_ENABLED=0 expected)", arch)
			}
		}
		if f.Section(".symtab") != nil || f.Section(".debug_info") != nil {
			t.Errorf("%s: binary has a symbol table or DWARF (-s -w expected)", arch)
		}
		bin = b
	}
	if !slices.Equal(names, []string{"usr/local/bin/pullbroker"}) {
		t.Errorf("%s: layer holds %q, want only usr/local/bin/pullbroker", arch, names)
	}
	return bin
}

// TestCommandLines checks the command lines in the manifests against the
// pullbroker binary: each subcommand exists and takes the flags given.
// A subcommand that has not landed yet is reported as skipped.
func TestCommandLines(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := buildPullbroker(t)
	seen := map[string]bool{}
	for _, dir := range allBuilds() {
		r := render(t, dir)
		for _, w := range r.workloads(t) {
			for _, c := range w.pod.Spec.Containers {
				key := strings.Join(c.Args, " ")
				if seen[key] {
					continue
				}
				seen[key] = true
				t.Run(w.pod.Labels[componentKey]+"/"+c.Args[0], func(t *testing.T) {
					checkCommandLine(t, bin, c.Args)
				})
			}
		}
	}
}

// buildPullbroker builds cmd/pullbroker into the test's temporary directory.
func buildPullbroker(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pullbroker")
	build := exec.Command("go", "build", "-o", bin, "../cmd/pullbroker")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func checkCommandLine(t *testing.T, bin string, args []string) {
	out, err := exec.Command(bin, args[0], "--help").CombinedOutput()
	help := string(out)
	if err != nil || !strings.Contains(help, "Usage:") || !strings.Contains(help, "pullbroker "+args[0]) {
		if args[0] == "serve" {
			t.Fatalf("pullbroker serve --help: %v\n%s", err, help)
		}
		t.Skipf("pullbroker %s is not implemented yet (%v): manifests use %q", args[0], err, args)
	}
	for _, a := range args[1:] {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		flag, _, _ := strings.Cut(a, "=")
		if !regexp.MustCompile(`(?m)^\s+(-\w, )?` + regexp.QuoteMeta(flag) + `\b`).MatchString(help) {
			t.Errorf("pullbroker %s has no flag %s:\n%s", args[0], flag, help)
		}
	}
}
