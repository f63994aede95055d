package deploy_test

import (
	"os"
	"testing"

	sigsyaml "sigs.k8s.io/yaml"
)

// appVersion is the image tag the chart deploys by default; release.sh
// pushes exactly it.
func appVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("helm/pullbroker/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var chart struct {
		AppVersion string `json:"appVersion"`
	}
	if err := sigsyaml.Unmarshal(b, &chart); err != nil {
		t.Fatal(err)
	}
	if chart.AppVersion == "" {
		t.Fatal("Chart.yaml has no appVersion")
	}
	return chart.AppVersion
}

// TestImageTagsAgree: every manifest runs the tag the release builds.
func TestImageTagsAgree(t *testing.T) {
	want := imageRepo + ":" + appVersion(t)
	for _, dir := range allBuilds() {
		for _, w := range render(t, dir).workloads(t) {
			for _, c := range append(w.pod.Spec.InitContainers, w.pod.Spec.Containers...) {
				if c.Image != want {
					t.Errorf("%s %s container %s: image %s, want %s (Chart.yaml appVersion)", dir, w, c.Name, c.Image, want)
				}
			}
		}
	}
}
