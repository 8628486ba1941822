// Package pki makes and uses vrep's certificates: a private CA per
// deployment, and a host certificate per primary and replica, named in the
// certificate's SAN. Connections between them are TLS 1.3 only, with
// mutual authentication always.
//
// A directory made by InitCA holds ca.crt and ca.key; Issue adds
// NAME.crt and NAME.key. Keys are ECDSA P-256, written 0600.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/vrep-io/vrep/internal/names"
)

// ErrExists is returned rather than overwrite a CA or a key.
var ErrExists = errors.New("already exists")

// Validity of what InitCA and Issue make.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	HostValidity = 2 * 365 * 24 * time.Hour
)

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, os.ErrExist) {
		return fmt.Errorf("%s %w", path, ErrExists)
	}
	if err != nil {
		return err
	}
	if err := pem.Encode(f, &pem.Block{Type: typ, Bytes: der}); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

// InitCA makes a CA in dir.
func InitCA(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "vrep CA", Organization: []string{"vrep"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	return writePair(dir, "ca", key, der)
}

// writePair writes base.key (0600) and base.crt.
func writePair(dir, base string, key *ecdsa.PrivateKey, certDER []byte) error {
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, base+".key"), "EC PRIVATE KEY", kder, 0o600); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, base+".crt"), "CERTIFICATE", certDER, 0o644)
}

func readPEM(path, typ string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != typ {
		return nil, fmt.Errorf("%s: not a PEM %s", path, typ)
	}
	return blk.Bytes, nil
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	der, err := readPEM(filepath.Join(dir, "ca.crt"), "CERTIFICATE")
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate (run vrep cert init first): %w", err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	kder, err := readPEM(filepath.Join(dir, "ca.key"), "EC PRIVATE KEY")
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kder)
	if err != nil {
		return nil, nil, err
	}
	return ca, key, nil
}

// Issue makes a host certificate for name, signed by the CA in dir, usable
// as a TLS server and client. The name goes into the SAN (as a DNS name)
// and the common name.
func Issue(dir, name string, validity time.Duration) error {
	if err := names.Part(name); err != nil {
		return err
	}
	ca, caKey, err := loadCA(dir)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"vrep"}},
		DNSNames:     []string{name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	return writePair(dir, name, key, der)
}

func load(dir, name string) (tls.Certificate, *x509.CertPool, error) {
	pool := x509.NewCertPool()
	caPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !pool.AppendCertsFromPEM(caPEM) {
		return tls.Certificate{}, nil, errors.New("CA certificate: no certificate in ca.crt")
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("certificate for %s (run vrep cert issue --name %s): %w", name, name, err)
	}
	return cert, pool, nil
}

// ServerConfig is the replica's side: TLS 1.3, a client certificate
// signed by the CA required from every peer.
func ServerConfig(dir, name string) (*tls.Config, error) {
	cert, pool, err := load(dir, name)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	}, nil
}

// ClientConfig is the primary's side: TLS 1.3, its own certificate, and
// the replica's certificate checked against the CA and serverName.
func ClientConfig(dir, name, serverName string) (*tls.Config, error) {
	cert, pool, err := load(dir, name)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ServerName:   serverName,
	}, nil
}

// PeerName returns the authenticated name of the peer of a finished
// handshake: the first DNS SAN of its verified certificate.
func PeerName(st tls.ConnectionState) (string, error) {
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return "", errors.New("peer presented no verified certificate")
	}
	leaf := st.VerifiedChains[0][0]
	if len(leaf.DNSNames) == 0 {
		return "", errors.New("peer certificate names no host")
	}
	return leaf.DNSNames[0], nil
}
