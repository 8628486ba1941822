package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/internal/events"
	"github.com/vrep-io/vrep/internal/waitfor"
)

// httpsGet fetches url over TLS, trusting the CA in caDir for the server
// named serverName, and presenting the client certificate NAME in
// certDir (none when certDir is empty).
func httpsGet(t *testing.T, url, caDir, serverName, certDir, name string) (int, string, error) {
	t.Helper()
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(caDir, "ca.crt"))
	if err != nil || !pool.AppendCertsFromPEM(ca) {
		t.Fatalf("CA of %s: %v", caDir, err)
	}
	tc := &tls.Config{RootCAs: pool, ServerName: serverName}
	if certDir != "" {
		c, err := tls.LoadX509KeyPair(filepath.Join(certDir, name+".crt"), filepath.Join(certDir, name+".key"))
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	client := &http.Client{Timeout: waitfor.Patience, Transport: &http.Transport{TLSClientConfig: tc}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestHTTPMutualTLS: on an address other hosts can reach, each daemon
// serves its status page and metrics only with mutual TLS, with the
// certificates replication uses: a scraper with a certificate of the
// same CA gets the metrics and the page; one without a certificate, or
// with a certificate of another CA, or speaking plain HTTP, gets nothing,
// and the refusal is an event. Loopback stays plain HTTP
// (TestStatusPageInBrowser).
func TestHTTPMutualTLS(t *testing.T) {
	need(t, "qemu-io", "curl")
	e := newEnv(t, 16<<20)
	pkiDir, addr := replicationSetup(t, e)
	vrepRun(t, "cert", "issue", "--dir", pkiDir, "--name", "scraper")
	foreign := filepath.Join(e.dir, "foreign")
	vrepRun(t, "cert", "init", "--dir", foreign)
	vrepRun(t, "cert", "issue", "--dir", foreign, "--name", "scraper")
	anyAddr := func() (listen, dial string) {
		_, port, _ := net.SplitHostPort(freePort(t))
		return "0.0.0.0:" + port, "127.0.0.1:" + port
	}
	repListen, repDial := anyAddr()
	priListen, priDial := anyAddr()
	startReplicaCmd(t, e.dir, pkiDir, addr, "--http", repListen)
	e.start(t, replicaFlags(addr, pkiDir, "--http", priListen, "--points-every", "300ms")...)
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x5a 0 1M", "flush")
	waitReplicated(t, e)

	for _, d := range []struct{ name, dial, metric string }{
		{"replica1", repDial, "vrep_replica_applied_lsn"},
		{"primary1", priDial, "vrep_replication_lag_seconds"},
	} {
		base := "https://" + d.dial + "/"
		code, body, err := httpsGet(t, base+"metrics", pkiDir, d.name, pkiDir, "scraper")
		if err != nil || code != 200 || !strings.Contains(body, d.metric) {
			t.Fatalf("%s: a scrape with the CA's client certificate: %d %v\n%s", d.name, code, err, body)
		}
		if code, body, err := httpsGet(t, base, pkiDir, d.name, pkiDir, "scraper"); err != nil || code != 200 || !strings.Contains(body, "vm1/disk0") {
			t.Fatalf("%s: the page with the CA's client certificate: %d %v", d.name, code, err)
		}
		// A real client too: curl, with the same files.
		if out := run(t, "curl", "-sf", "--cacert", filepath.Join(pkiDir, "ca.crt"), "--cert", filepath.Join(pkiDir, "scraper.crt"),
			"--key", filepath.Join(pkiDir, "scraper.key"), "--resolve", d.name+":"+strings.Split(d.dial, ":")[1]+":127.0.0.1",
			"https://"+d.name+":"+strings.Split(d.dial, ":")[1]+"/metrics"); !strings.Contains(out, d.metric) {
			t.Fatalf("%s: curl with the CA's client certificate:\n%s", d.name, out)
		}
		if code, body, err := httpsGet(t, base+"metrics", pkiDir, d.name, "", ""); err == nil {
			t.Fatalf("%s: a scrape without a client certificate was answered: %d\n%s", d.name, code, body)
		}
		if code, body, err := httpsGet(t, base+"metrics", pkiDir, d.name, foreign, "scraper"); err == nil {
			t.Fatalf("%s: a scrape with another CA's certificate was answered: %d\n%s", d.name, code, body)
		}
		// Plain HTTP on the TLS port reaches nothing either.
		c := &http.Client{Timeout: waitfor.Patience}
		if resp, err := c.Get("http://" + d.dial + "/metrics"); err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 || strings.Contains(string(b), d.metric) {
				t.Fatalf("%s: plain HTTP on the TLS port: %d\n%s", d.name, resp.StatusCode, b)
			}
		}
	}
	// The refusals are events (refused connections), on both daemons.
	for _, where := range [][]string{{"--data", filepath.Join(e.dir, "replica")}, {"--state", e.state}} {
		waitfor.True(t, "the refused handshake among "+where[1]+"'s events", func() bool {
			_, out := vrepRun(t, append([]string{"events", "--json"}, where...)...)
			var evs []events.Event
			json.Unmarshal([]byte(out), &evs)
			for _, ev := range evs {
				if ev.Kind == events.Refused && strings.Contains(ev.Reason, "status page: TLS handshake refused") {
					return true
				}
			}
			return false
		})
	}

	// Without certificates, an address other hosts reach is refused, and
	// nothing starts; with a name whose certificate is missing, too.
	other := filepath.Join(e.dir, "other")
	_, port, _ := net.SplitHostPort(freePort(t))
	for _, extra := range [][]string{nil, {"--tls-dir", pkiDir, "--name", "nobody"}} {
		args := append([]string{"primary", "--state", other, "--disk", "vm2/disk0=" + e.img, "--nbd", "unix:" + filepath.Join(e.dir, "o.sock"), "--http", "0.0.0.0:" + port}, extra...)
		code, out := vrepRun(t, args...)
		if code == 0 || !(strings.Contains(out, "mutual TLS") || strings.Contains(out, "certificate for nobody")) {
			t.Fatalf("--http 0.0.0.0 %v: exit %d\n%s", extra, code, out)
		}
		if _, err := os.Stat(other); err == nil {
			t.Fatalf("a refused --http created %s", other)
		}
	}
}
