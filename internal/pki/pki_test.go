package pki

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/waitfor"
)

// handshake runs one TLS handshake over loopback and returns the name the
// server authenticated, or the first error either side saw.
func handshake(t *testing.T, server, client *tls.Config) (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		name string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(waitfor.Patience))
		tc := tls.Server(c, server)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		name, err := PeerName(tc.ConnectionState())
		tc.Write([]byte("ok"))
		done <- result{name, err}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(waitfor.Patience))
	tc := tls.Client(c, client)
	cerr := tc.Handshake()
	if cerr == nil {
		// In TLS 1.3 a refused client certificate shows on the first read.
		_, cerr = io.ReadFull(tc, make([]byte, 2))
	}
	r := <-done
	if r.err != nil {
		return "", r.err
	}
	return r.name, cerr
}

func setup(t *testing.T) string {
	dir := t.TempDir()
	if err := InitCA(dir); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"replica1", "primary1"} {
		if err := Issue(dir, n, HostValidity); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestMutualTLS(t *testing.T) {
	dir := setup(t)
	srv, err := ServerConfig(dir, "replica1")
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ClientConfig(dir, "primary1", "replica1")
	if err != nil {
		t.Fatal(err)
	}
	name, err := handshake(t, srv, cli)
	if err != nil || name != "primary1" {
		t.Fatalf("handshake: %q %v", name, err)
	}
	if st, _ := os.Stat(filepath.Join(dir, "primary1.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v", st.Mode())
	}
}

func TestRefusals(t *testing.T) {
	dir := setup(t)
	other := setup(t) // a different CA
	srv, _ := ServerConfig(dir, "replica1")
	good, _ := ClientConfig(dir, "primary1", "replica1")

	foreign, _ := ClientConfig(other, "primary1", "replica1")
	if _, err := handshake(t, srv, foreign); err == nil {
		t.Error("a client with a certificate from another CA was accepted")
	}
	noCert := good.Clone()
	noCert.Certificates = nil
	if _, err := handshake(t, srv, noCert); err == nil {
		t.Error("a client without a certificate was accepted")
	}
	old := good.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, err := handshake(t, srv, old); err == nil {
		t.Error("a TLS 1.2 client was accepted")
	}
	wrongName, _ := ClientConfig(dir, "primary1", "replica2")
	if _, err := handshake(t, srv, wrongName); err == nil {
		t.Error("the client accepted a replica with another name")
	}
	// Plaintext: the server sees no TLS hello.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	errc := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			errc <- err
			return
		}
		c.SetDeadline(time.Now().Add(waitfor.Patience))
		errc <- tls.Server(c, srv).Handshake()
		c.Close()
	}()
	c, _ := net.Dial("tcp", l.Addr().String())
	c.Write([]byte("HELLO I AM A PRIMARY\r\n\r\n"))
	c.Close()
	if err := <-errc; err == nil {
		t.Error("a plaintext client completed a handshake")
	}
}

func TestNoOverwriteAndBadNames(t *testing.T) {
	dir := setup(t)
	if err := InitCA(dir); !errors.Is(err, ErrExists) {
		t.Fatalf("second InitCA = %v, want ErrExists", err)
	}
	if err := Issue(dir, "primary1", HostValidity); !errors.Is(err, ErrExists) {
		t.Fatalf("second Issue = %v, want ErrExists", err)
	}
	for _, bad := range []string{"../ca", "a/b", "", ".hidden"} {
		if err := Issue(dir, bad, HostValidity); err == nil {
			t.Errorf("Issue(%q) accepted", bad)
		}
	}
	if err := Issue(t.TempDir(), "x", HostValidity); err == nil {
		t.Error("Issue without a CA succeeded")
	}
	// An expired certificate is refused.
	if err := Issue(dir, "stale", -time.Hour); err != nil {
		t.Fatal(err)
	}
	srv, _ := ServerConfig(dir, "replica1")
	cli, _ := ClientConfig(dir, "stale", "replica1")
	if _, err := handshake(t, srv, cli); err == nil {
		t.Error("an expired client certificate was accepted")
	}
}
