package deploy_test

import (
	"maps"
	"net"
	"slices"
	"strconv"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	sigsyaml "sigs.k8s.io/yaml"
)

// TestHALayout: the three replicas on one bucket, as the kustomize overlay
// and the chart with values-ha.yaml render them. checkCommon (through
// TestOverlaysRender and TestChartRenders) already loads the config with
// config.Load and checks the policies; these are the choices the layout
// exists for.
func TestHALayout(t *testing.T) {
	for _, dir := range []string{"overlays/ha", "examples/ha-webhook"} {
		t.Run(dir, func(t *testing.T) { checkHA(t, render(t, dir)) })
	}
	for _, tc := range chartCases {
		if tc.valuesFile == "values-ha.yaml" {
			t.Run("helm/"+tc.name, func(t *testing.T) { checkHA(t, renderChart(t, tc)) })
		}
	}
}

// haConfig is the part of config.yaml the layout depends on, read as
// YAML so that the check does not lean on the config structs.
type haConfig struct {
	Storage struct {
		Driver         string         `json:"driver"`
		Parameters     map[string]any `json:"parameters"`
		SpoolDir       string         `json:"spoolDir"`
		RecordCacheTTL string         `json:"recordCacheTTL"`
		MaxSizeBytes   int64          `json:"maxSizeBytes"`
	} `json:"storage"`
	Cluster struct {
		Name           string `json:"name"`
		LeaderElection struct {
			Backend   string `json:"backend"`
			Namespace string `json:"namespace"`
			LeaseName string `json:"leaseName"`
		} `json:"leaderElection"`
		PeerService   string `json:"peerService"`
		PeerListen    string `json:"peerListen"`
		PeerTokenFile string `json:"peerTokenFile"`
	} `json:"cluster"`
	Cache struct {
		KeepRunningImages bool `json:"keepRunningImages"`
	} `json:"cache"`
}

func checkHA(t *testing.T, r rendered) {
	proxy := onlyOne(t, "proxy", r.component(t, "proxy"))
	d := typed[appsv1.Deployment](t, r.find("Deployment", proxy.name))
	if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
		t.Errorf("replicas %v, want 3", d.Spec.Replicas)
	}
	pdbObj := r.find("PodDisruptionBudget", "pullbroker")
	if pdbObj == nil {
		t.Fatal("no PodDisruptionBudget")
	}
	pdb := typed[policyv1.PodDisruptionBudget](t, pdbObj)
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 2 || pdb.Spec.MaxUnavailable != nil {
		t.Errorf("PodDisruptionBudget %+v, want minAvailable 2 alone", pdb.Spec)
	}
	spec := proxy.pod.Spec
	spread := map[string]corev1.UnsatisfiableConstraintAction{}
	for _, c := range spec.TopologySpreadConstraints {
		if c.LabelSelector == nil || !selects(c.LabelSelector.MatchLabels, proxy.pod.Labels) || c.MaxSkew != 1 {
			t.Errorf("topology spread %+v does not spread the proxy Pods one by one", c)
		}
		if !slices.Equal(c.MatchLabelKeys, []string{appsv1.DefaultDeploymentUniqueLabelKey}) {
			t.Errorf("topology spread over %s: matchLabelKeys %v, want the new ReplicaSet's Pods only", c.TopologyKey, c.MatchLabelKeys)
		}
		spread[c.TopologyKey] = c.WhenUnsatisfiable
	}
	if spread[corev1.LabelHostname] != corev1.DoNotSchedule || spread[corev1.LabelTopologyZone] != corev1.ScheduleAnyway || len(spread) != 2 {
		t.Errorf("topology spread %v, want one replica per node (required) and over zones (preferred)", spread)
	}
	if a := spec.Affinity; a == nil || a.PodAntiAffinity == nil || len(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 ||
		a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.TopologyKey != corev1.LabelHostname ||
		!selects(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution[0].PodAffinityTerm.LabelSelector.MatchLabels, proxy.pod.Labels) {
		t.Errorf("affinity %+v, want a preferred anti-affinity of the proxy Pods per node", spec.Affinity)
	}

	c := spec.Containers[0]
	raw := configFile(t, r, proxy, "config")
	var cfg haConfig
	if err := sigsyaml.Unmarshal([]byte(raw), &cfg); err != nil {
		t.Fatal(err)
	}
	s := cfg.Storage
	if s.Driver != "s3" || s.Parameters["bucket"] == nil || s.Parameters["region"] == nil || s.Parameters["rootdirectory"] == nil ||
		s.Parameters["forcepathstyle"] != false {
		t.Errorf("storage %+v, want s3 with bucket, region, rootdirectory and forcepathstyle", s)
	}
	if _, ok := s.Parameters["accesskey"]; ok {
		t.Errorf("storage.parameters.accesskey: credentials come from the AWS default chain")
	}
	if s.RecordCacheTTL != "5s" {
		t.Errorf("storage.recordCacheTTL %q, want 5s", s.RecordCacheTTL)
	}
	// The AWS default chain reads both variables from one Secret.
	credSecrets := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			credSecrets[e.Name] = e.ValueFrom.SecretKeyRef.Name
		}
	}
	if len(credSecrets) != 2 || credSecrets["AWS_ACCESS_KEY_ID"] == "" || credSecrets["AWS_ACCESS_KEY_ID"] != credSecrets["AWS_SECRET_ACCESS_KEY"] {
		t.Errorf("credential env %v, want AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY from one Secret", credSecrets)
	}

	le := cfg.Cluster.LeaderElection
	if le.Backend != "kubernetes" || le.Namespace != "" || le.LeaseName != "" {
		t.Errorf("cluster.leaderElection %+v, want backend kubernetes in the service account's namespace, the default Lease name", le)
	}
	if cfg.Cluster.Name != "" {
		t.Errorf("cluster.name %q: the host name, which is the Pod name, is the replica's name", cfg.Cluster.Name)
	}
	if !cfg.Cache.KeepRunningImages {
		t.Error("cache.keepRunningImages is off")
	}
	if a := spec.AutomountServiceAccountToken; a != nil && !*a {
		t.Error("no service account token for the Lease and the informers")
	}

	// Peers: the headless Service the config names, on the port the
	// replicas listen on, and the token file from the Secret.
	var peerPort int32
	for _, p := range c.Ports {
		if p.Name == "peer" {
			peerPort = p.ContainerPort
		}
	}
	if _, port, err := net.SplitHostPort(cfg.Cluster.PeerListen); err != nil || port != strconv.Itoa(int(peerPort)) || peerPort != 5002 {
		t.Errorf("cluster.peerListen %q, container peer port %d: want both 5002", cfg.Cluster.PeerListen, peerPort)
	}
	if cfg.Cluster.PeerService != namespace+"/pullbroker-peers" {
		t.Errorf("cluster.peerService %q, want %s/pullbroker-peers", cfg.Cluster.PeerService, namespace)
	}
	if svcObj := r.find("Service", "pullbroker-peers"); svcObj == nil {
		t.Error("no Service pullbroker-peers")
	} else {
		svc := typed[corev1.Service](t, svcObj)
		if svc.Spec.ClusterIP != corev1.ClusterIPNone || len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "peer" ||
			svc.Spec.Ports[0].Port != 5002 || containerPort(t, c, svc.Spec.Ports[0].TargetPort) != peerPort ||
			!selects(svc.Spec.Selector, proxy.pod.Labels) {
			t.Errorf("Service pullbroker-peers %+v, want headless, port 5002 named peer, to the proxy's peer port", svc.Spec)
		}
	}
	if !projects(proxy, "config", cfg.Cluster.PeerTokenFile) {
		t.Errorf("cluster.peerTokenFile %q is not projected from a Secret", cfg.Cluster.PeerTokenFile)
	}

	// RBAC: exactly these rules for the proxy, each bound to its
	// ServiceAccount.
	want := map[string][]rule{
		"Role/pullbroker-credentials": {{APIGroups: []string{""}, Resources: []string{"secrets"}, Verbs: []string{"get", "list", "watch"}}},
		"Role/pullbroker-leader-election": {
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
			{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"pullbroker"}, Verbs: []string{"get", "update"}},
		},
		"Role/pullbroker-peers":                 {{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}}},
		"ClusterRole/pullbroker-running-images": {{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"list", "watch"}}},
	}
	got := map[string][]rule{}
	for _, o := range append(r.ofKind("Role"), r.ofKind("ClusterRole")...) {
		if o.GetLabels()[componentKey] == "proxy" {
			got[o.GetKind()+"/"+o.GetName()] = rulesOf(t, o)
		}
	}
	for name, rules := range want {
		b1, _ := sigsyaml.Marshal(rules)
		b2, _ := sigsyaml.Marshal(got[name])
		if string(b1) != string(b2) {
			t.Errorf("%s rules:\n%s\nwant:\n%s", name, b2, b1)
		}
	}
	if len(got) != len(want) {
		t.Errorf("roles %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	bound := map[string]bool{}
	for _, o := range append(r.ofKind("RoleBinding"), r.ofKind("ClusterRoleBinding")...) {
		refKind, refName := o.Object["roleRef"].(map[string]any)["kind"], o.Object["roleRef"].(map[string]any)["name"]
		for _, s := range o.Object["subjects"].([]any) {
			if s.(map[string]any)["name"] == spec.ServiceAccountName {
				bound[refKind.(string)+"/"+refName.(string)] = true
			}
		}
	}
	for name := range want {
		if !bound[name] {
			t.Errorf("%s is not bound to the proxy's ServiceAccount %s", name, spec.ServiceAccountName)
		}
	}
}
