package deploy_test

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// metrics are the series the dashboard is built against (the contract in
// the design), with their labels. sourceMetrics checks them against the code.
var metrics = map[string][]string{
	"pullbroker_http_requests_total":               {"route", "method", "code"},
	"pullbroker_http_request_duration_seconds":     {"route", "method"},
	"pullbroker_cache_requests_total":              {"kind", "upstream", "result"},
	"pullbroker_served_bytes_total":                {"source"},
	"pullbroker_upstream_requests_total":           {"upstream", "method", "code"},
	"pullbroker_upstream_request_duration_seconds": {"upstream", "method"},
	"pullbroker_fills_in_flight":                   nil,
	"pullbroker_fill_clients":                      nil,
	"pullbroker_upstream_ratelimit_remaining":      {"upstream"},
	"pullbroker_token_refreshes_total":             {"upstream"},
	"pullbroker_credential_errors_total":           {"upstream"},
	"pullbroker_pins":                              {"policy"},
	"pullbroker_cache_size_bytes":                  nil,
	"pullbroker_cache_objects":                     nil,
	"pullbroker_evictions_total":                   {"reason"},
	// Not in the original list; exported by the code and shown as well.
	"pullbroker_evicted_bytes_total":       {"reason"},
	"pullbroker_upstream_circuit_open":     {"upstream"},
	"pullbroker_credential_source_healthy": {"upstream"},
}

// Labels Prometheus adds when it scrapes through the ServiceMonitor.
var targetLabels = []string{"namespace", "pod", "instance", "job", "service", "le"}

var histograms = []string{"pullbroker_http_request_duration_seconds", "pullbroker_upstream_request_duration_seconds"}

type panel struct {
	ID      int     `json:"id"`
	Type    string  `json:"type"`
	Title   string  `json:"title"`
	GridPos gridPos `json:"gridPos"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

type gridPos struct{ H, W, X, Y int }

func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/pullbroker-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title      string  `json:"title"`
		UID        string  `json:"uid"`
		Schema     int     `json:"schemaVersion"`
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.Title == "" || d.UID == "" || d.Schema == 0 {
		t.Errorf("title %q uid %q schemaVersion %d", d.Title, d.UID, d.Schema)
	}
	vars := map[string]bool{"__rate_interval": true}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
	}
	if !vars["datasource"] {
		t.Error("no datasource variable: the dashboard would be tied to one Prometheus")
	}

	var all []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)

	ids := map[int]bool{}
	used := map[string]bool{}
	metricRE := regexp.MustCompile(`pullbroker_[a-z_]+`)
	selectorRE := regexp.MustCompile(`\{([^}]*)\}`)
	byLabelRE := regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	varRE := regexp.MustCompile(`\$\{?(\w+)`)
	for _, p := range all {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or repeated", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			names := metricRE.FindAllString(tg.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q uses no pullbroker metric", p.Title, tg.Expr)
			}
			var labels []string
			for _, n := range names {
				base := n
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if s, ok := strings.CutSuffix(n, suffix); ok && slices.Contains(histograms, s) {
						base = s
					}
				}
				if slices.Contains(histograms, base) && base == n {
					t.Errorf("panel %q: histogram %s used without _bucket/_sum/_count", p.Title, n)
				}
				l, ok := metrics[base]
				if !ok {
					t.Errorf("panel %q: unknown metric %s", p.Title, n)
				}
				used[base] = true
				labels = append(labels, l...)
			}
			// Every label the query names exists on the metric or is added by the scrape.
			var named []string
			for _, m := range selectorRE.FindAllStringSubmatch(tg.Expr, -1) {
				for _, matcher := range strings.Split(m[1], ",") {
					if k, _, ok := strings.Cut(matcher, "="); ok {
						named = append(named, strings.TrimRight(strings.TrimSpace(k), "!~"))
					}
				}
			}
			for _, m := range byLabelRE.FindAllStringSubmatch(tg.Expr, -1) {
				for _, l := range strings.Split(m[1], ",") {
					named = append(named, strings.TrimSpace(l))
				}
			}
			for _, l := range named {
				if l != "" && !slices.Contains(labels, l) && !slices.Contains(targetLabels, l) {
					t.Errorf("panel %q: label %q is not on %v", p.Title, l, names)
				}
			}
			for _, m := range varRE.FindAllStringSubmatch(tg.Expr, -1) {
				if !vars[m[1]] {
					t.Errorf("panel %q: undefined variable $%s", p.Title, m[1])
				}
			}
		}
	}
	for m := range metrics {
		if !used[m] {
			t.Errorf("metric %s is on no panel", m)
		}
	}
}

// TestDashboardMetricsExist reads the Prometheus collectors that the Go code
// defines (prometheus.NewXxx(XxxOpts{Namespace, Subsystem, Name}, labels))
// and checks every metric the dashboard uses against them, labels included.
func TestDashboardMetricsExist(t *testing.T) {
	src := sourceMetrics(t, "..")
	if len(src) == 0 {
		t.Fatal("found no metrics in the source")
	}
	for name, labels := range metrics {
		got, ok := src[name]
		if !ok {
			t.Errorf("the dashboard uses %s, which the code does not define", name)
			continue
		}
		if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(labels))) {
			t.Errorf("%s: the code's labels are %v, the dashboard expects %v", name, got, labels)
		}
	}
}

// sourceMetrics maps metric names to label names for every collector
// created with a literal Opts in the non-test Go files under root.
func sourceMetrics(t *testing.T, root string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	fset := token.NewFileSet()
	pkgs := map[string][]*ast.File{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			base := d.Name()
			if path != root && (strings.HasPrefix(base, ".") || base == "testdata" || base == "deploy" || base == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		pkgs[filepath.Dir(path)] = append(pkgs[filepath.Dir(path)], f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, files := range pkgs {
		// String constants of the package, for Name: someConst.
		consts := map[string]string{}
		for _, f := range files {
			ast.Inspect(f, func(n ast.Node) bool {
				if vs, ok := n.(*ast.ValueSpec); ok {
					for i, id := range vs.Names {
						if i < len(vs.Values) {
							if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
								consts[id.Name], _ = strconv.Unquote(lit.Value)
							}
						}
					}
				}
				return true
			})
		}
		str := func(e ast.Expr) string {
			switch e := e.(type) {
			case *ast.BasicLit:
				v, _ := strconv.Unquote(e.Value)
				return v
			case *ast.Ident:
				return consts[e.Name]
			}
			return ""
		}
		for _, f := range files {
			ast.Inspect(f, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok || len(call.Args) == 0 {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok || !strings.HasPrefix(sel.Sel.Name, "New") {
					return true
				}
				if pkg, ok := sel.X.(*ast.Ident); !ok || pkg.Name != "prometheus" {
					return true
				}
				opts, ok := call.Args[0].(*ast.CompositeLit)
				if !ok {
					return true
				}
				var parts [3]string
				for _, el := range opts.Elts {
					kv, ok := el.(*ast.KeyValueExpr)
					if !ok {
						continue
					}
					switch kv.Key.(*ast.Ident).Name {
					case "Namespace":
						parts[0] = str(kv.Value)
					case "Subsystem":
						parts[1] = str(kv.Value)
					case "Name":
						parts[2] = str(kv.Value)
					}
				}
				if parts[2] == "" {
					return true
				}
				var nonEmpty []string
				for _, p := range parts {
					if p != "" {
						nonEmpty = append(nonEmpty, p)
					}
				}
				labels := []string{}
				if len(call.Args) > 1 {
					if lit, ok := call.Args[1].(*ast.CompositeLit); ok {
						for _, el := range lit.Elts {
							labels = append(labels, str(el))
						}
					}
				}
				out[strings.Join(nonEmpty, "_")] = labels
				return true
			})
		}
	}
	return out
}
