package testenv

import (
	"fmt"
	"os/exec"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob"
)

// AzureServer is an Azurite blob service started by StartAzurite, serving one container of its
// well-known development account over plain HTTP, with the account in the URL path.
type AzureServer struct {
	// ServiceURL is "http://127.0.0.1:PORT/devstoreaccount1".
	ServiceURL  string
	AccountName string
	AccountKey  string
	Container   string
	p           *Process
}

// Azurite's development account, the same in every Azurite install (documented by Microsoft).
const (
	azuriteAccount   = "devstoreaccount1"
	azuriteKey       = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
	azuriteContainer = "pullbroker-cache"
)

// StartAzurite runs Azurite's blob service (its data in a temp dir) on a free 127.0.0.1 port,
// waits until it answers and creates one empty container. The API version check is off so that
// a newer Azure SDK than this Azurite knows is still served.
func StartAzurite(t testing.TB) *AzureServer {
	t.Helper()
	bin := Tool(t, "azurite-blob")
	dir := t.TempDir()
	p, addr := startOnFreePort(t, "azurite", func(port int) *exec.Cmd {
		return exec.Command(bin, "--blobHost", "127.0.0.1", "--blobPort", fmt.Sprint(port),
			"--location", dir, "--skipApiVersionCheck")
	}, func(addr string) bool { return httpAnswers("http://" + addr) })
	s := &AzureServer{ServiceURL: "http://" + addr + "/" + azuriteAccount, AccountName: azuriteAccount,
		AccountKey: azuriteKey, Container: azuriteContainer, p: p}
	if _, err := s.Client(t).CreateContainer(t.Context(), s.Container, nil); err != nil {
		t.Fatalf("azurite: create container %s: %v\n%s", s.Container, err, p.LogTail())
	}
	return s
}

// Parameters are the azure storage driver parameters that reach the container, as
// storage.parameters takes them.
func (s *AzureServer) Parameters() map[string]any {
	return map[string]any{
		"accountname": s.AccountName,
		"accountkey":  s.AccountKey,
		"container":   s.Container,
		"serviceurl":  s.ServiceURL,
		"credentials": map[string]any{"type": "shared_key"},
	}
}

// Client is a blob client of the account, for tests that look into the container directly.
func (s *AzureServer) Client(t testing.TB) *azblob.Client {
	t.Helper()
	cred, err := azblob.NewSharedKeyCredential(s.AccountName, s.AccountKey)
	if err != nil {
		t.Fatalf("azurite credentials: %v", err)
	}
	c, err := azblob.NewClientWithSharedKeyCredential(s.ServiceURL, cred, nil)
	if err != nil {
		t.Fatalf("azurite client: %v", err)
	}
	return c
}

// Keys lists every blob name in the container.
func (s *AzureServer) Keys(t testing.TB) []string {
	t.Helper()
	var keys []string
	pager := s.Client(t).NewListBlobsFlatPager(s.Container, nil)
	for pager.More() {
		page, err := pager.NextPage(t.Context())
		if err != nil {
			t.Fatalf("list container %s: %v", s.Container, err)
		}
		for _, b := range page.Segment.BlobItems {
			keys = append(keys, *b.Name)
		}
	}
	return keys
}
