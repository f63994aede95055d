package auth

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/pullbroker/pullbroker/config"
)

// Secret values used by the malformed inputs below. Each failure path must
// name the file, Secret or field and what is wrong, never these.
const (
	leakUser = "leaky-user-7f3a"
	leakPass = "S3cr3t-pa55-0c41"
	leakNum  = "8675309123"
)

var leakSecrets = []string{leakPass, leakNum, leakUser + ":" + leakPass, "!" + leakPass}

// malformedDockerConfigs are docker configs that fail to parse or to match
// and that carry the secrets in every position an error could quote.
var malformedDockerConfigs = map[string]string{
	"auth not base64":         `{"auths":{"r.example.com":{"auth":"!` + leakPass + `"}}}`,
	"auth without colon":      `{"auths":{"r.example.com":{"auth":"` + b64(leakPass) + `"}}}`,
	"control char in secret":  `{"auths":{"r.example.com":{"username":"` + leakUser + `","password":"` + leakPass + "\x01" + `"}}}`,
	"number as password":      `{"auths":{"r.example.com":{"username":"` + leakUser + `","password":` + leakNum + `}}}`,
	"unterminated":            `{"auths":{"r.example.com":{"username":"` + leakUser + `","password":"` + leakPass,
	"auths not an object":     `{"auths":"` + leakPass + `"}`,
	"no entry for the host":   `{"auths":{"other.example.com":{"auth":"` + b64(leakUser+":"+leakPass) + `"}}}`,
	"entry is a number":       `{"auths":{"r.example.com":` + leakNum + `}}`,
	"secret as bare document": leakPass,
}

func TestFailurePathsDoNotLeak(t *testing.T) {
	dir := t.TempDir()
	logger, logs := newTestLogger(t)
	reg := prometheus.NewRegistry()
	opts := Options{Logger: logger, Registerer: reg, FileCheckInterval: -1}
	var texts []string

	upFor := func(c *config.Credentials) config.Upstream {
		return config.Upstream{Name: "r.example.com", Endpoint: "https://r.example.com", Credentials: c}
	}

	// At start: For refuses, naming the file.
	for name, content := range malformedDockerConfigs {
		f := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".json")
		if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := For(context.Background(), upFor(&config.Credentials{DockerConfig: &config.DockerConfig{File: f}}), opts)
		if err == nil || !strings.Contains(err.Error(), f) {
			t.Fatalf("%s: For = %v", name, err)
		}
		texts = append(texts, err.Error())
	}

	// As rotations of a good file: logged, the good credential stays.
	file := filepath.Join(dir, "config.json")
	good := `{"auths":{"r.example.com":{"username":"good","password":"good-pw"}}}`
	if err := os.WriteFile(file, []byte(good), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := For(context.Background(), upFor(&config.Credentials{DockerConfig: &config.DockerConfig{File: file}}), opts)
	if err != nil {
		t.Fatal(err)
	}
	for name, content := range malformedDockerConfigs {
		if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		a, err := src.Authorization()
		if err != nil || a.Password != "good-pw" {
			t.Fatalf("%s: Authorization = %v, %v", name, a, err)
		}
	}

	// A password file of two lines.
	pf := filepath.Join(dir, "password")
	if err := os.WriteFile(pf, []byte(leakPass+"\n"+leakPass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = For(context.Background(), upFor(&config.Credentials{Basic: &config.BasicCredentials{Username: leakUser, PasswordFile: pf}}), opts)
	if err == nil {
		t.Fatal("a two-line password file was accepted")
	}
	texts = append(texts, err.Error())

	// Secrets of the wrong shape.
	s := &source{upstream: "r.example.com", names: []string{"r.example.com"}}
	for _, sec := range []*corev1.Secret{
		{Type: corev1.SecretTypeOpaque, Data: map[string][]byte{"password": []byte(leakPass)}},
		{Type: corev1.SecretTypeBasicAuth, Data: map[string][]byte{"username": []byte(leakPass)}},
		{Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(malformedDockerConfigs["number as password"])}},
		{Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{".dockercfg": []byte(leakPass)}},
		{Type: corev1.SecretTypeDockercfg, Data: map[string][]byte{corev1.DockerConfigKey: []byte(malformedDockerConfigs["auth not base64"])}},
	} {
		if _, err := s.secretMaterial(sec); err == nil {
			t.Fatalf("Secret %+v accepted", sec.Type)
		} else {
			texts = append(texts, err.Error())
		}
	}

	texts = append(texts, logs.String(), metricsText(t, reg))
	assertNoSecrets(t, leakSecrets, texts...)
	if t.Failed() || testing.Verbose() {
		t.Logf("errors:\n%s", strings.Join(texts[:len(texts)-2], "\n"))
	}
}
