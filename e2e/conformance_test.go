package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/pullbroker/pullbroker/internal/testenv"
)

// TestConformanceReadOnly runs the OCI distribution-spec conformance suite in its read-only mode
// against pullbroker fronting the docker-registry, with the repository named in the image-prefix
// form (upstream.test/team/app) and every tag, manifest and blob pushed there listed as read-only
// data. Every test must pass; on failure the suite's report is printed.
func TestConformanceReadOnly(t *testing.T) {
	f := newFixture(t)
	pb := f.startPullbroker(pbConfig{})

	tags := []string{appTag, multiTag}
	manifests := []string{f.appDigest, f.multi.Digest}
	var blobs []string
	addBlobs := func(ref string) {
		for _, d := range parseManifest(t, f.upstreamManifest(ref)).blobs() {
			blobs = append(blobs, d.Digest)
		}
	}
	addBlobs(appRepo + "@" + f.appDigest)
	for _, platform := range testenv.MultiArchPlatforms {
		tags = append(tags, multiTag+"-"+strings.ReplaceAll(platform, "/", "-"))
		manifests = append(manifests, f.multi.Platforms[platform])
		addBlobs(appRepo + "@" + f.multi.Platforms[platform])
	}

	results := t.TempDir()
	cmd := exec.Command(testenv.ConformanceBinary(t))
	cmd.Dir = t.TempDir()
	cmd.Env = append(os.Environ(),
		"OCI_REGISTRY="+pb.Addr,
		"OCI_TLS=disabled",
		"OCI_REPO1="+upstreamName+"/"+appRepo,
		"OCI_API_PUSH=false",
		"OCI_API_REFERRER=false",
		"OCI_API_BLOBS_DELETE=false",
		"OCI_API_MANIFESTS_DELETE=false",
		"OCI_API_TAGS_DELETE=false",
		"OCI_RO_DATA_TAGS="+strings.Join(tags, " "),
		"OCI_RO_DATA_MANIFESTS="+strings.Join(manifests, " "),
		"OCI_RO_DATA_BLOBS="+strings.Join(blobs, " "),
		"OCI_FILTER_TEST=OCI Conformance Test/read-only",
		"OCI_RESULTS_DIR="+results,
	)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	testenv.KillWithParent(cmd)
	err := cmd.Run()
	report, _ := os.ReadFile(filepath.Join(results, "results.yaml"))
	counts := conformanceCounts(out.String())
	t.Logf("conformance: %d tags, %d manifests, %d blobs as read-only data; results %v", len(tags), len(manifests), len(blobs), counts)
	if err != nil || !strings.Contains(out.String(), "OCI Conformance Result: Pass") ||
		counts["Pass"] == 0 || counts["FAIL"]+counts["Error"]+counts["Skip"] != 0 {
		t.Fatalf("conformance suite failed (%v):\n%s\nresults.yaml:\n%s", err, out.String(), report)
	}
	t.Logf("conformance suite passed:\n%s", out.String())
	f.secrets.check(t, "conformance suite output", out.Bytes())
	f.secrets.check(t, "conformance results.yaml", report)
}

// conformanceCounts reads the suite's summary lines ("  Pass......: 33") into status -> count.
func conformanceCounts(report string) map[string]int {
	counts := map[string]int{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(\w+)\.+:\s+(\d+)$`).FindAllStringSubmatch(report, -1) {
		n, _ := strconv.Atoi(m[2])
		counts[m[1]] = n
	}
	return counts
}
