package deploy_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsyaml "sigs.k8s.io/yaml"
)

const chartDir = "helm/pullbroker"

// chartCase is one set of chart values and the kustomize build that makes
// the same choices.
type chartCase struct {
	name   string
	values string
	// valuesFile, in the chart's directory, is read before values (helm -f).
	valuesFile string
	// kustomize is the equivalent build: a directory under deploy/, or
	// "+servicemonitor" after an overlay name.
	kustomize string
}

var chartCases = []chartCase{
	{name: "defaults", kustomize: "overlays/default"},
	{name: "daemonset", kustomize: "overlays/daemonset", values: `
mode: daemonset
resources: {requests: {cpu: 50m, memory: 128Mi, ephemeral-storage: 1Gi}, limits: {memory: 512Mi}}`},
	{name: "webhook", kustomize: "overlays/webhook", values: `webhook: {enabled: true}`},
	{name: "webhook-cert-manager", kustomize: "examples/webhook-cert-manager", values: `
webhook: {enabled: true, replicas: 2, certManager: {enabled: true, issuerRef: {kind: Issuer, name: pullbroker-ca}}}`},
	{name: "daemonset-webhook", kustomize: "examples/daemonset-webhook", values: `
mode: daemonset
resources: {requests: {cpu: 50m, memory: 128Mi, ephemeral-storage: 1Gi}, limits: {memory: 512Mi}}
webhook: {enabled: true}`},
	{name: "servicemonitor", kustomize: "default+servicemonitor", values: `serviceMonitor: {enabled: true}`},
	{name: "ha", kustomize: "overlays/ha", valuesFile: "values-ha.yaml"},
	{name: "ha-webhook", kustomize: "examples/ha-webhook", valuesFile: "values-ha.yaml", values: `webhook: {enabled: true}`},
	{name: "daemonset-servicemonitor", kustomize: "daemonset+servicemonitor", values: `
mode: daemonset
resources: {requests: {cpu: 50m, memory: 128Mi, ephemeral-storage: 1Gi}, limits: {memory: 512Mi}}
serviceMonitor: {enabled: true}`},
}

// More value sets that have no kustomize twin: each must pass helm lint,
// render, and pass the same checks as the overlays.
var chartOnlyCases = []chartCase{
	{name: "everything", values: `
upstreams:
  - name: docker.io
    aliases: [index.docker.io, registry-1.docker.io]
    endpoint: https://registry-1.docker.io
    existingSecret: dockerhub
    repositories: ["library/**"]
tls: {enabled: true, certManager: {enabled: true, issuerRef: {kind: ClusterIssuer, name: ca}}}
storage: {persistence: {storageClassName: fast, size: 50Gi}, maxSizeBytes: 40000000000}
grafanaDashboard: {enabled: true}
serviceMonitor: {enabled: true}
webhook: {enabled: true, excludeNamespaces: [kube-system, monitoring]}`},
	// Two replicas on an S3-compatible server, credentials from the rest of
	// the AWS chain (IRSA), the Lease in the bucket, no peers.
	{name: "s3-irsa", values: `
replicas: 2
storage: {driver: s3, s3: {bucket: cache, regionendpoint: "https://s3.example.com", forcepathstyle: true, rootdirectory: ""}}`},
}

// Value sets that leave out what the overlays' checks demand (a claim, the
// policies, a Secret the output makes): helm lint and a render only.
var chartLintOnlyCases = []chartCase{
	{name: "emptydir-no-policies", values: `
storage: {persistence: {enabled: false}}
networkPolicy: {enabled: false}
podDisruptionBudget: {enabled: false}
tls: {enabled: true, existingSecret: my-tls}
image: {digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000"}`},
}

func loadChart(t *testing.T) *chartv2.Chart {
	t.Helper()
	c, err := loader.Load(chartDir)
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	return c
}

func parseValues(t *testing.T, s string) map[string]any {
	t.Helper()
	vals := map[string]any{}
	if err := sigsyaml.Unmarshal([]byte(s), &vals); err != nil {
		t.Fatalf("values %q: %v", s, err)
	}
	return vals
}

// vals are the case's values as helm install -f valuesFile --values
// values would merge them.
func (tc chartCase) vals(t *testing.T) map[string]any {
	t.Helper()
	vals := map[string]any{}
	if tc.valuesFile != "" {
		b, err := os.ReadFile(filepath.Join(chartDir, tc.valuesFile))
		if err != nil {
			t.Fatal(err)
		}
		vals = parseValues(t, string(b))
	}
	return chartutil.MergeTables(parseValues(t, tc.values), vals)
}

func haChartCase(t *testing.T) chartCase {
	t.Helper()
	for _, tc := range chartCases {
		if tc.kustomize == "overlays/ha" {
			return tc
		}
	}
	t.Fatal("no chart case for overlays/ha")
	return chartCase{}
}

// renderChartValues renders the chart as `helm template --namespace
// pullbroker pullbroker deploy/helm/pullbroker` would, schema check included.
func renderChartValues(c *chartv2.Chart, vals map[string]any) (map[string]string, error) {
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(c, vals,
		common.ReleaseOptions{Name: "pullbroker", Namespace: namespace, IsInstall: true}, nil, false)
	if err != nil {
		return nil, err
	}
	return engine.Render(c, rv)
}

// renderChart renders one case into objects, each put into the release
// namespace as helm install does, plus the Namespace the kustomize twin
// creates (with the chart: `--create-namespace` and the Pod Security labels
// docs/deploy.md gives).
func renderChart(t *testing.T, tc chartCase) rendered {
	t.Helper()
	files, err := renderChartValues(loadChart(t), tc.vals(t))
	if err != nil {
		t.Fatalf("render chart (%s): %v", tc.name, err)
	}
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	r := rendered{name: "helm/" + tc.name}
	for _, n := range names {
		if strings.HasSuffix(n, "NOTES.txt") || strings.HasPrefix(strings.TrimPrefix(n, "pullbroker/templates/"), "_") {
			continue
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(files[n]), 4096)
		for {
			obj := map[string]any{}
			err := dec.Decode(&obj)
			if errors.Is(err, os.ErrClosed) || err != nil && err.Error() == "EOF" {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v\n%s", n, err, files[n])
			}
			if len(obj) == 0 {
				continue
			}
			u := &unstructured.Unstructured{Object: obj}
			if !clusterScoped[u.GetKind()] {
				u.SetNamespace(namespace)
			}
			r.objs = append(r.objs, u)
		}
	}
	twin := tc.kustomize
	if twin == "" {
		twin = "overlays/default"
	}
	if ns := kustomizeBuild(t, twin).find("Namespace", namespace); ns != nil {
		r.objs = append(r.objs, ns.DeepCopy())
	}
	return r
}

func kustomizeBuild(t *testing.T, name string) rendered {
	t.Helper()
	if overlay, ok := strings.CutSuffix(name, "+servicemonitor"); ok {
		return renderWithServiceMonitor(t, overlay)
	}
	return render(t, name)
}

func allChartCases() []chartCase { return append(slices.Clone(chartCases), chartOnlyCases...) }

// TestChartLint runs helm lint's own checks (Chart.yaml, values against
// the schema, every template rendered and parsed) for each value set.
func TestChartLint(t *testing.T) {
	for _, tc := range append(allChartCases(), chartLintOnlyCases...) {
		t.Run(tc.name, func(t *testing.T) {
			res := lint.RunAll(chartDir, tc.vals(t), namespace)
			for _, m := range res.Messages {
				if m.Severity >= support.WarningSev {
					t.Errorf("helm lint: %s", m)
				}
			}
		})
	}
}

// TestChartRenders: every value set passes the checks the overlays pass.
func TestChartRenders(t *testing.T) {
	for _, tc := range allChartCases() {
		t.Run(tc.name, func(t *testing.T) {
			r := renderChart(t, tc)
			checkCommon(t, r)
			if r.find("ServiceMonitor", "pullbroker") != nil {
				checkServiceMonitor(t, r)
			}
			for _, cm := range r.ofKind("ConfigMap") {
				s, _, _ := unstructured.NestedString(cm.Object, "data", "config.yaml")
				for _, secret := range []string{"password", "keyFile", "passwordFile"} {
					if strings.Contains(s, secret) {
						t.Errorf("ConfigMap %s names %q: credentials come from Secrets only", cm.GetName(), secret)
					}
				}
			}
		})
	}
}

// TestChartMatchesKustomize: for the same choices the chart and the
// kustomize builds put the same objects into the cluster, but for Helm's
// own labels, kustomize's ConfigMap name hash and the chart's config
// checksum annotation (the two ways of rolling Pods on a config change).
func TestChartMatchesKustomize(t *testing.T) {
	for _, tc := range chartCases {
		t.Run(tc.name, func(t *testing.T) {
			want := normalized(t, kustomizeBuild(t, tc.kustomize))
			got := normalized(t, renderChart(t, tc))
			for key, w := range want {
				g, ok := got[key]
				if !ok {
					t.Errorf("the chart lacks %s", key)
					continue
				}
				if g != w {
					t.Errorf("%s differs from %s:\n%s", key, tc.kustomize, lineDiff(w, g))
				}
			}
			for key := range got {
				if _, ok := want[key]; !ok {
					t.Errorf("the chart has %s, %s has not", key, tc.kustomize)
				}
			}
		})
	}
}

var configMapHash = regexp.MustCompile(`\bpullbroker-config-[a-z0-9]{10}\b`)

// normalized maps kind/name to the object as canonical YAML, with what
// differs by design between Helm and kustomize taken out.
func normalized(t *testing.T, r rendered) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, o := range r.objs {
		o = o.DeepCopy()
		if o.GetKind() == "Namespace" {
			continue
		}
		o.SetNamespace("")
		dropHelmLabels(o.Object, "metadata", "labels")
		dropHelmLabels(o.Object, "spec", "template", "metadata", "labels")
		unstructured.RemoveNestedField(o.Object, "metadata", "annotations", "helm.sh/resource-policy")
		unstructured.RemoveNestedField(o.Object, "spec", "template", "metadata", "annotations", "checksum/config")
		for _, path := range [][]string{{"metadata", "annotations"}, {"spec", "template", "metadata", "annotations"}} {
			if m, ok, _ := unstructured.NestedMap(o.Object, path...); ok && len(m) == 0 {
				unstructured.RemoveNestedField(o.Object, path...)
			}
		}
		if s, ok, _ := unstructured.NestedString(o.Object, "data", "config.yaml"); ok {
			var cfg any
			if err := sigsyaml.Unmarshal([]byte(s), &cfg); err != nil {
				t.Fatalf("%s config.yaml: %v", r.name, err)
			}
			b, _ := sigsyaml.Marshal(cfg)
			_ = unstructured.SetNestedField(o.Object, string(b), "data", "config.yaml")
		}
		b, err := sigsyaml.Marshal(o.Object)
		if err != nil {
			t.Fatal(err)
		}
		b = configMapHash.ReplaceAll(b, []byte("pullbroker-config"))
		name := configMapHash.ReplaceAllString(o.GetName(), "pullbroker-config")
		out[o.GetKind()+"/"+name] = string(bytes.TrimSpace(b))
	}
	return out
}

func dropHelmLabels(obj map[string]any, path ...string) {
	for _, k := range []string{"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance", "app.kubernetes.io/version"} {
		unstructured.RemoveNestedField(obj, append(path, k)...)
	}
}

// TestChartSchemaErrors: a value of the wrong type, or a choice that
// cannot work, fails with a message that names the value and what it needs.
func TestChartSchemaErrors(t *testing.T) {
	c := loadChart(t)
	for _, tc := range []struct{ values, want string }{
		{`replicas: "two"`, "at '/replicas': got string, want integer"},
		{`storage: {persistence: {enabled: "yes"}}`, "at '/storage/persistence/enabled': got string, want boolean"},
		{`webhook: {failurePolicy: Fail2}`, "at '/webhook/failurePolicy': value must be one of 'Ignore', 'Fail'"},
		{`mode: statefulset`, "mode"},
		{`replica: 2`, "replica"},
		{`upstreams: {docker.io: {}}`, "upstreams"},
		{`upstreams: [{name: docker.io, credentials: {basic: {username: u, password: p}}}]`, "upstreams"},
		{`tls: {enabled: true}`, "tls.enabled needs tls.existingSecret"},
		{`tls: {enabled: true, certManager: {enabled: true}}`, "tls.certManager.issuerRef.name"},
		{`webhook: {enabled: true, certManager: {enabled: true}}`, "webhook.certManager.issuerRef.name"},
		{`replicas: 2`, "replicas: 2 needs the cache in one bucket that every replica shares"},
		{`{replicas: 3, storage: {persistence: {enabled: false}}}`, "replicas: 3 needs the cache in one bucket"},
		{`{replicas: 3, storage: {persistence: {accessModes: [ReadWriteMany]}}}`, "set storage.driver: s3 and storage.s3.bucket"},
		{`storage: {driver: s3}`, "storage.s3.bucket: name the bucket"},
		{`storage: {driver: s3, s3: {bucket: b}}`, "storage.s3.region"},
		{`storage: {driver: gcs}`, "at '/storage/driver'"},
		{`{mode: daemonset, storage: {driver: s3, s3: {bucket: b, region: r}}}`, "storage.driver: s3 is for mode: deployment"},
		{`peers: {enabled: true}`, "peers.enabled needs storage.driver: s3"},
		{`leaderElection: {backend: etcd}`, "at '/leaderElection/backend'"},
	} {
		_, err := renderChartValues(c, parseValues(t, tc.values))
		if err == nil {
			t.Errorf("values %s rendered, want a schema error", tc.values)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("values %s: error %q does not name %s", tc.values, err, tc.want)
		}
	}
}

// TestChartDefaults: the image is the release tag, the dashboard is the
// one in deploy/grafana.
func TestChartDefaults(t *testing.T) {
	r := renderChart(t, chartCases[0])
	for _, w := range r.workloads(t) {
		for _, c := range w.pod.Spec.Containers {
			if want := imageRepo + ":" + appVersion(t); c.Image != want {
				t.Errorf("%s: image %s, want %s", w, c.Image, want)
			}
		}
	}
	a, err := os.ReadFile("grafana/pullbroker-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(chartDir + "/dashboards/pullbroker-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Error("the chart's dashboard differs from deploy/grafana/pullbroker-dashboard.json: copy it over")
	}
}

// lineDiff lists the lines only one side has: "-" kustomize, "+" chart.
func lineDiff(want, got string) string {
	count := map[string]int{}
	for _, l := range strings.Split(want, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(got, "\n") {
		count[l]--
	}
	var b strings.Builder
	for _, l := range strings.Split(want, "\n") {
		if count[l] > 0 {
			b.WriteString("- " + l + "\n")
			count[l]--
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if count[l] < 0 {
			b.WriteString("+ " + l + "\n")
			count[l]++
		}
	}
	return b.String()
}
