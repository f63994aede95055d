package config

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestEmbeddedDefault(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.Addr != ":5000" || c.Admin.Addr != ":5001" || c.Storage.Driver != "filesystem" ||
		c.Storage.Parameters["rootdirectory"] != "./pullbroker-data" || c.DefaultUpstream != "docker.io" {
		t.Fatalf("unexpected default: %+v", c)
	}
	want := LeaderElection{Backend: LeaderElectionStorage, LeaseDuration: DefaultLeaseDuration,
		RenewDeadline: DefaultRenewDeadline, RetryPeriod: DefaultRetryPeriod, LeaseName: DefaultLeaseName}
	if c.Cluster.LeaderElection != want || c.Cluster.Name != "" {
		t.Fatalf("cluster = %+v, want leader election %+v and no name (cmd fills it in)", c.Cluster, want)
	}
	for _, name := range []string{"docker.io", "ghcr.io", "gcr.io", "quay.io", "registry.k8s.io", "public.ecr.aws", "index.docker.io"} {
		u, ok := c.Upstream(name)
		if !ok {
			t.Fatalf("default lacks %s", name)
		}
		if u.TagTTL != DefaultTagTTL || u.Credentials != nil {
			t.Fatalf("%s: %+v", name, u)
		}
	}
}

func write(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFileMergesOverDefaultAndEnvironmentOverrides(t *testing.T) {
	p := write(t, `
listen: {addr: "127.0.0.1:7000"}
upstreams:
  - name: ghcr.io
    endpoint: http://127.0.0.1:9999
    tagTTL: 1m
  - name: registry.local:5000
    endpoint: http://127.0.0.1:5555
`)
	t.Setenv("PULLBROKER_LOG_LEVEL", "debug")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen.Addr != "127.0.0.1:7000" || c.Log.Level != "debug" || c.Listen.DrainTimeout != 30*time.Second {
		t.Fatalf("merge: %+v", c)
	}
	if u, _ := c.Upstream("ghcr.io"); u.Endpoint != "http://127.0.0.1:9999" || u.TagTTL != time.Minute {
		t.Fatalf("ghcr.io not replaced: %+v", u)
	}
	if _, ok := c.Upstream("registry.local:5000"); !ok {
		t.Fatal("added upstream missing")
	}
	if _, ok := c.Upstream("docker.io"); !ok {
		t.Fatal("public upstreams dropped")
	}
}

func TestBadConfigNamesTheKey(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{`listen: {addr: "nope"}`, "listen.addr"},
		{`listen: {tlsCertFile: a.pem}`, "listen.tlsCertFile"},
		{`lsiten: {addr: ":1"}`, "lsiten"},
		{`log: {format: xml}`, "log.format"},
		{`mode: sometimes`, "mode"},
		{`defaultUpstream: nowhere.example`, "defaultUpstream"},
		{`upstreams: [{name: "x.io", endpoint: "ftp://x.io"}]`, "upstreams[x.io].endpoint"},
		{`upstreams: [{name: "x.io", endpoint: "https://x.io/path"}]`, "upstreams[x.io].endpoint"},
		{`upstreams: [{name: "Bad_Host", endpoint: "https://x.io"}]`, "upstreams[Bad_Host].name"},
		{`upstreams: [{name: "x.io", endpoint: "https://x.io", tagTTL: "soon"}]`, "tagTTL"},
		{`upstreams: [{name: "x.io", endpoint: "https://x.io", credentials: {basic: {username: u}}}]`, "upstreams[x.io].credentials.basic"},
		{`upstreams: [{name: "x.io", endpoint: "https://x.io", credentials: {kubernetesSecret: {name: nons}}}]`, "credentials.kubernetesSecret.name"},
		{`upstreams: [{name: "docker.io", endpoint: "https://a.io"}, {name: "y.io", aliases: [index.docker.io], endpoint: "https://y.io"}]`, "index.docker.io"},
		{`upstreams: [{name: "[::1]:5000", endpoint: "http://[::1]:5000"}]`, "cannot be the first path component"},
		{`upstreams: [{name: "x.io", endpoint: "https://x.io", allowedRealmHosts: ["https://auth.x.io/token"]}]`, "upstreams[x.io].allowedRealmHosts[0]"},
		{`upstreams: [{name: "x.io", endpoint: "https://x.io", allowedRealmHosts: [auth.x.io, "auth.x.io:443"]}]`, "upstreams[x.io].allowedRealmHosts[1]"},
		{`upstreams: [{name: "x.io", endpoint: "https://x.io", allowedRealmHosts: ["*"]}]`, "upstreams[x.io].allowedRealmHosts[0]"},
		{`access: {allowedNetworks: ["10.0.0.0/33"]}`, "access.allowedNetworks[0]"},
		{`storage: {fills: {stallTimeout: 2h}}`, "storage.fills.stallTimeout"},
		{`storage: {fills: {maxConcurrent: -1}}`, "storage.fills.maxConcurrent"},
		{`storage: {scrub: {interval: -1s}}`, "storage.scrub.interval"},
		{`cluster: {accountingInterval: 0s}`, "cluster.accountingInterval"},
		{`storage: {scrub: {interval: 1h, bytesPerSecond: 0}}`, "storage.scrub.bytesPerSecond"},
		{`storage: {driver: s4}`, "storage.driver"},
		{`storage: {redirect: true}`, "storage.redirect: the filesystem driver"},
		{`storage: {driver: s3-aws}`, "storage.driver: \"s3-aws\" is the name of distribution's package; its S3 driver is named s3"},
		{`storage: {driver: s3, parameters: {region: eu-west-1}}`, "storage.parameters.bucket: required for s3"},
		{`storage: {driver: s3, parameters: {bucket: b}}`, "storage.parameters.region"},
		{`storage: {driver: s3, parameters: {bucket: b, regionendpoint: "127.0.0.1:9000"}}`, "storage.parameters.regionendpoint"},
		{`storage: {driver: s3, parameters: {bucket: b, region: eu-west-1, forcepathstyle: maybe}}`, "storage.parameters.forcepathstyle"},
		{`storage: {driver: s3, parameters: {bucket: b, region: eu-west-1, accesskey: k}}`, "storage.parameters.accesskey"},
		{`storage: {driver: gcs}`, "storage.parameters.bucket: required for gcs"},
		{`storage: {driver: gcs, parameters: {bucket: b, keyfile: 7}}`, "storage.parameters.keyfile"},
		{`storage: {driver: gcs, parameters: {bucket: b, keyfile: /k.json, credentials: {type: service_account}}}`, "storage.parameters.credentials: set keyfile or credentials, not both"},
		{`storage: {driver: gcs, parameters: {bucket: b, credentials: key.json}}`, "storage.parameters.credentials: must be the fields"},
		{`storage: {driver: gcs, parameters: {bucket: b, credentials: {type: authorized_user, client_email: e, private_key: k}}}`, "storage.parameters.credentials.type"},
		{`storage: {driver: gcs, parameters: {bucket: b, credentials: {type: service_account, client_email: e}}}`, "storage.parameters.credentials.private_key: required"},
		{`storage: {driver: gcs, parameters: {bucket: b, chunksize: 1000000}}`, "storage.parameters.chunksize"},
		{`storage: {driver: gcs, parameters: {bucket: b, chunksize: big}}`, "storage.parameters.chunksize"},
		{`storage: {driver: gcs, parameters: {bucket: b, maxconcurrency: -3}}`, "storage.parameters.maxconcurrency"},
		{`storage: {driver: gcs, redirect: true, parameters: {bucket: b}}`, "storage.redirect: only s3 can redirect"},
		{`storage: {driver: azure, parameters: {container: c, credentials: {type: default_credentials}}}`, "storage.parameters.accountname: required for azure"},
		{`storage: {driver: azure, parameters: {accountname: a, credentials: {type: default_credentials}}}`, "storage.parameters.container: required for azure"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c}}`, "storage.parameters.credentials.type: required for azure"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c, credentials: {type: sas}}}`, "storage.parameters.credentials.type: \"sas\" is not one of"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c, credentials: {type: shared_key}}}`, "storage.parameters.accountkey: required with credentials.type shared_key"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c, accountkey: "not base64!", credentials: {type: shared_key}}}`, "storage.parameters.accountkey: is not base64"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c, credentials: {type: client_secret, clientid: i, tenantid: t}}}`, "storage.parameters.credentials.secret: required"},
		{`storage: {driver: azure, parameters: {accountname: 12, container: c, credentials: {type: default_credentials}}}`, "storage.parameters.accountname: must be a string"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c, serviceurl: "127.0.0.1:10000", credentials: {type: default_credentials}}}`, "storage.parameters.serviceurl"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c, connectionstring: "x", credentials: {type: default_credentials}}}`, "storage.parameters.connectionstring: distribution's azure driver ignores it"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c, retry_delay: 5, credentials: {type: default_credentials}}}`, "storage.parameters.retry_delay"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c, max_retries: "3", credentials: {type: default_credentials}}}`, "storage.parameters.max_retries"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c, max_retries: -1, credentials: {type: default_credentials}}}`, "storage.parameters.max_retries"},
		{`storage: {driver: azure, parameters: {accountname: a, container: c, skipverify: "yes", credentials: {type: default_credentials}}}`, "storage.parameters.skipverify"},
		{`storage: {driver: azure, redirect: true, parameters: {accountname: a, container: c, credentials: {type: default_credentials}}}`, "storage.redirect: only s3 can redirect"},
		{`cluster: {name: "a/b"}`, "cluster.name"},
		{`cluster: {leaderElection: {backend: etcd}}`, "cluster.leaderElection.backend"},
		{`cluster: {leaderElection: {retryPeriod: -1s}}`, "cluster.leaderElection.retryPeriod"},
		{`cluster: {leaderElection: {renewDeadline: 2s}}`, "cluster.leaderElection.renewDeadline"},
		{`cluster: {leaderElection: {leaseDuration: 10s}}`, "cluster.leaderElection.leaseDuration"},
		{`cluster: {leaderElection: {backend: kubernetes, leaseDuration: 15500ms}}`, "cluster.leaderElection.leaseDuration: 15.5s is not a whole number of seconds"},
		{`cluster: {leaderElection: {leaseName: Pull_Broker}}`, "cluster.leaderElection.leaseName"},
		{`cluster: {leaderElection: {namespace: "a.b"}}`, "cluster.leaderElection.namespace"},
		{`pins: [{policy: forever}]`, "pins[0].policy"},
		{`pins: [{policy: locked}]`, "pins[0].lockFile"},
		{`cluster: {peers: ["a:5002"]}`, "cluster.peerListen: must be set"},
		{`cluster: {peerListen: "nope", peerTokenFile: t, peers: ["a:5002"]}`, "cluster.peerListen: \"nope\""},
		{`cluster: {peerListen: ":5002", peers: ["a:5002"]}`, "cluster.peerTokenFile"},
		{`cluster: {peerListen: ":5002", peerTokenFile: t}`, "cluster.peers: must list"},
		{`cluster: {peerService: "ns/pb"}`, "cluster.peerListen: must be set"},
		{`cluster: {peerListen: ":5002", peerTokenFile: t, peerService: "pb"}`, "cluster.peerService: \"pb\" is not namespace/name"},
		{`cluster: {peerListen: ":5002", peerTokenFile: t, peerService: "ns/pb", peers: ["a:5002"]}`, "cluster.peerService: set either"},
		{`cluster: {peerListen: ":5002", peerTokenFile: t, peers: ["a:5002", "b"]}`, "cluster.peers[1]"},
		{`cluster: {peerListen: ":5002", peerTokenFile: t, peers: ["a:5002", "a:5002"]}`, "cluster.peers[1]: \"a:5002\" is listed twice"},
		{`cluster: {peerListen: ":5002", peerTokenFile: t, peers: ["a:5002"], peerTLS: {certFile: c, keyFile: k}}`, "cluster.peerTLS: set certFile, keyFile and caFile together"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			_, err := Load(write(t, tt.yaml))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load(%s) error = %v, want one naming %q", tt.yaml, err, tt.want)
			}
		})
	}
}

// TestStorageParametersAreTheChosenDriversOnly: the default filesystem
// root must not become a key prefix in a bucket.
func TestStorageParametersAreTheChosenDriversOnly(t *testing.T) {
	c, err := Load(write(t, `storage: {driver: s3, parameters: {bucket: b, regionendpoint: "http://127.0.0.1:9000", forcepathstyle: true}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"bucket": "b", "regionendpoint": "http://127.0.0.1:9000", "forcepathstyle": true}
	if !reflect.DeepEqual(c.Storage.Parameters, want) {
		t.Fatalf("parameters = %v, want %v", c.Storage.Parameters, want)
	}
	c, err = Load(write(t, `storage: {driver: filesystem}`))
	if err != nil || c.Storage.Parameters["rootdirectory"] != DefaultFilesystemRoot {
		t.Fatalf("filesystem without rootdirectory: %v %v", c, err)
	}
}

// TestObjectStorageParametersLoad: the parameters distribution's gcs and
// azure drivers take, as its own configuration writes them, pass
// validation unchanged.
func TestObjectStorageParametersLoad(t *testing.T) {
	for _, yaml := range []string{
		`storage: {driver: gcs, parameters: {bucket: b, rootdirectory: /pb, chunksize: 5242880, keyfile: /etc/gcs/key.json}}`,
		`storage: {driver: gcs, parameters: {bucket: b, maxconcurrency: 50, credentials: {type: service_account, project_id: p, client_email: "pb@p.iam.gserviceaccount.com", private_key: "-----BEGIN PRIVATE KEY-----\n..."}}}`,
		`storage: {driver: gcs, parameters: {bucket: b}}`,
		`storage: {driver: azure, parameters: {accountname: a, accountkey: "c2VjcmV0", container: c, realm: core.chinacloudapi.cn, max_retries: 3, retry_delay: 1s, credentials: {type: shared_key}}}`,
		`storage: {driver: azure, parameters: {accountname: a, container: c, serviceurl: "https://a.blob.core.windows.net", credentials: {type: client_secret, clientid: i, tenantid: t, secret: s}}}`,
		`storage: {driver: azure, parameters: {accountname: a, container: c, credentials: {type: default_credentials}}}`,
	} {
		if _, err := Load(write(t, yaml)); err != nil {
			t.Errorf("Load(%s): %v", yaml, err)
		}
	}
}

func TestSecretsAreNotEchoedInErrors(t *testing.T) {
	_, err := Load(write(t, `storage: {driver: s3, parameters: {bucket: b, region: eu-west-1, secretkey: hunter3}}`))
	if err == nil || strings.Contains(err.Error(), "hunter3") {
		t.Fatalf("error = %v", err)
	}
	_, err = Load(write(t, `storage: {driver: azure, parameters: {accountname: a, container: c, accountkey: "hunter4!", credentials: {type: shared_key}}}`))
	if err == nil || strings.Contains(err.Error(), "hunter4") {
		t.Fatalf("error = %v", err)
	}
	_, err = Load(write(t, `storage: {driver: gcs, parameters: {bucket: b, credentials: {type: user, private_key: hunter5}}}`))
	if err == nil || strings.Contains(err.Error(), "hunter5") {
		t.Fatalf("error = %v", err)
	}
	_, err = Load(write(t, `upstreams: [{name: "x.io", endpoint: "https://x.io", credentials: {basic: {username: u, password: hunter2, passwordEnv: PW}}}]`))
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error = %v", err)
	}
}

// TestExampleDocumentsEveryKey keeps config.example.yaml complete: it must
// load, and name every key of the Config struct.
func TestExampleDocumentsEveryKey(t *testing.T) {
	example := filepath.Join("..", "config.example.yaml")
	if _, err := Load(example); err != nil {
		t.Fatalf("config.example.yaml does not load: %v", err)
	}
	b, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range keys(reflect.TypeOf(Config{})) {
		if !strings.Contains(string(b), key+":") {
			t.Errorf("config.example.yaml does not document %q", key)
		}
	}
}

func keys(t reflect.Type) []string {
	var out []string
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || t == reflect.TypeOf(time.Duration(0)) {
		return nil
	}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if tag := f.Tag.Get("mapstructure"); tag != "" {
			out = append(out, tag)
			out = append(out, keys(f.Type)...)
		}
	}
	return out
}

func TestECRCredentials(t *testing.T) {
	c, err := Load(write(t, `
upstreams:
  - name: 123456789012.dkr.ecr.eu-west-1.amazonaws.com
    endpoint: https://123456789012.dkr.ecr.eu-west-1.amazonaws.com
    credentials:
      ecr: {region: eu-west-1, registryID: "123456789012", endpoint: "https://api.ecr.eu-west-1.amazonaws.com"}
  - name: ecr.test:5000
    endpoint: http://127.0.0.1:5000
    credentials:
      ecr: {region: us-east-1, endpoint: "http://127.0.0.1:8080"}
`))
	if err != nil {
		t.Fatal(err)
	}
	u, _ := c.Upstream("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
	if e := u.Credentials.ECR; e == nil || *e != (ECR{Region: "eu-west-1", RegistryID: "123456789012", Endpoint: "https://api.ecr.eu-west-1.amazonaws.com"}) {
		t.Fatalf("ecr = %+v", u.Credentials.ECR)
	}

	const up = `upstreams: [{name: "123456789012.dkr.ecr.eu-west-1.amazonaws.com", endpoint: "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com", credentials: %s}]`
	const key = "upstreams[123456789012.dkr.ecr.eu-west-1.amazonaws.com].credentials"
	for _, tt := range []struct{ creds, want string }{
		{`{ecr: {}}`, key + ".ecr.region: must be set"},
		{`{ecr: {region: "EU west"}}`, key + ".ecr.region: \"EU west\" is not an AWS region"},
		{`{ecr: {region: us-east-1}}`, key + ".ecr.region: \"us-east-1\" is not the region of the upstream endpoint"},
		{`{ecr: {region: eu-west-1, registryID: "1234"}}`, key + ".ecr.registryID"},
		{`{ecr: {region: eu-west-1, endpoint: "api.ecr.eu-west-1.amazonaws.com"}}`, key + ".ecr.endpoint"},
		{`{ecr: {region: eu-west-1, endpoint: "https://api.ecr.eu-west-1.amazonaws.com/v1"}}`, key + ".ecr.endpoint"},
		{`{ecr: {region: eu-west-1, endpoint: "http://vpce.example.com"}}`, key + ".ecr.endpoint: \"http://vpce.example.com\" must use https"},
		{`{ecr: {region: eu-west-1}, basic: {username: AWS, passwordEnv: PW}}`, key + ": set exactly one of basic, gcpServiceAccount, dockerConfig, kubernetesSecret, ecr (found 2)"},
		{`{ecr: {region: eu-west-1, regoin: x}}`, "regoin"},
	} {
		_, err := Load(write(t, fmt.Sprintf(up, tt.creds)))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("credentials %s: error = %v, want one containing %q", tt.creds, err, tt.want)
		}
	}
}

func TestLoadErrorsNameKeyAndValue(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"listn: {addr: x}\n", `unknown key "listn" at the top level`},
		{"listen: {addr: ':5000', bogus: 1}\n", `unknown key "bogus" in listen`},
		{"upstreams:\n  - name: a.io\n    endpoint: https://a.io\n    tagTTL: five\n", `upstreams[0].tagTTL: "five" is not a duration`},
		{"storage: {maxSizeBytes: lots}\n", `storage.maxSizeBytes: "lots" is not a whole number`},
		{"storage: {gc: {grace: 0s}}\n", `storage.gc.grace`},
		{"upstreams:\n  docker.io: {endpoint: https://x.io}\n", `upstreams: is a map, but a list is expected`},
		{"upstreams:\n  - {name: a.io, endpoint: https://a.io}\n  - {name: a.io, endpoint: https://b.io}\n", `upstreams[1]: "a.io" is already the name or an alias of upstreams[0]`},
		{"upstreams:\n  - {name: a.io, endpoint: https://a.io, aliases: [b.io]}\n  - {name: b.io, endpoint: https://b.io}\n", `upstreams[1]: "b.io" is already the name or an alias of upstreams[0]`},
	} {
		_, err := Load(write(t, tc.yaml))
		if err == nil {
			t.Errorf("%q loaded, want an error", tc.yaml)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "decoding failed") {
			t.Errorf("%q: error %q, want %q without mapstructure's wrapper", tc.yaml, err, tc.want)
		}
	}
}

func TestLoadErrorsBlameEnvironmentVariable(t *testing.T) {
	t.Setenv("PULLBROKER_LISTEN_DRAINTIMEOUT", "soon")
	_, err := Load("")
	if err == nil || !strings.Contains(err.Error(), `PULLBROKER_LISTEN_DRAINTIMEOUT (listen.drainTimeout): "soon" is not a duration`) {
		t.Errorf("error %v, want it to name PULLBROKER_LISTEN_DRAINTIMEOUT", err)
	}
	os.Unsetenv("PULLBROKER_LISTEN_DRAINTIMEOUT")
	t.Setenv("PULLBROKER_LOG_FORMAT", "xml")
	_, err = Load("")
	if err == nil || !strings.Contains(err.Error(), `PULLBROKER_LOG_FORMAT (log.format): "xml" is not one of text, json`) {
		t.Errorf("error %v, want it to name PULLBROKER_LOG_FORMAT", err)
	}
	// A mistake in the file names the key alone.
	os.Unsetenv("PULLBROKER_LOG_FORMAT")
	_, err = Load(write(t, "log: {level: loud}\n"))
	if err == nil || !strings.HasSuffix(err.Error(), `: log.level: "loud" is not one of debug, info, warn, error`) {
		t.Errorf("error %v", err)
	}
}
