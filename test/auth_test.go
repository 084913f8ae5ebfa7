package test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/otamq/otamq/broker"
)

// pki is a CA made for one test, with helpers to issue certificates.
type pki struct {
	t    testing.TB
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string // CA file
}

func newPKI(t testing.TB, name string) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	p := &pki{t: t, dir: t.TempDir(), cert: cert, key: key}
	p.pem = filepath.Join(p.dir, name+"-ca.pem")
	writePEM(t, p.pem, "CERTIFICATE", der)
	return p
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// issue returns cert and key files for cn, for a server (with 127.0.0.1 as
// its address) or a client.
func (p *pki) issue(cn string, server bool) (certFile, keyFile string, kp tls.Certificate) {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		p.t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(p.dir, cn+".pem"), filepath.Join(p.dir, cn+".key")
	writePEM(p.t, certFile, "CERTIFICATE", der)
	writePEM(p.t, keyFile, "EC PRIVATE KEY", kder)
	kp, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		p.t.Fatal(err)
	}
	return certFile, keyFile, kp
}

func refusedWith(t *testing.T, what string, c *client, err error, code byte) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: connection accepted", what)
		return
	}
	if c == nil || c.ca == nil || c.ca.ReasonCode != code {
		var got any = err
		if c != nil && c.ca != nil {
			got = c.ca.ReasonCode
		}
		t.Errorf("%s: refused with %v, want CONNACK 0x%02x", what, got, code)
	}
}

func TestAuthTokens(t *testing.T) {
	b := startBroker(t)
	tok := b.register("d1", "device", "")
	tokRev := b.register("d-rev", "device", "")
	b.register("d-cert", "device", "", map[string]any{"auth": "cert"})

	// The right token works.
	ok := b.device("d1", tok)
	_ = ok.cli.Disconnect(&paho.Disconnect{})

	cases := []struct {
		name, id, user, pass string
		will                 *paho.WillMessage
	}{
		{"wrong token", "d1", "d1", tok + "x", nil},
		{"empty password", "d1", "d1", "", nil},
		{"client id differs from username", "d1", "d2", tok, nil},
		{"no username", "d1", "", tok, nil},
		{"unknown client", "ghost", "ghost", tok, nil},
		{"certificate-only device with a password", "d-cert", "d-cert", tok, nil},
		{"operator with a wrong password", opID, opID, opPassword + "x", nil},
		{"will on another device's topic", "d1", "d1", tok, &paho.WillMessage{Topic: "dm/d2/ev", Payload: []byte("x")}},
		{"will on an admin topic", "d1", "d1", tok, &paho.WillMessage{Topic: "dm/admin/device/revoke", Payload: []byte("{}")}},
	}
	for _, c := range cases {
		cl, err := dialClient(t, b.Addr(), c.id, clientOpts{username: c.user, password: c.pass, will: c.will})
		refusedWith(t, c.name, cl, err, 0x87)
	}
	// A will on the device's own topic is fine.
	if _, err := dialClient(t, b.Addr(), "d1", clientOpts{username: "d1", password: tok, will: &paho.WillMessage{Topic: "dm/d1/ev", Payload: evPayload}}); err != nil {
		t.Errorf("will on own topic refused: %v", err)
	}

	// Revocation: the connected device is disconnected at once, and can no
	// longer connect.
	rev := b.device("d-rev", tokRev)
	if err := b.admin().Call(context.Background(), "device/revoke", map[string]any{"id": "d-rev", "reason": "test"}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-rev.cli.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("revoked device still connected")
	}
	cl, err := dialClient(t, b.Addr(), "d-rev", clientOpts{username: "d-rev", password: tokRev})
	refusedWith(t, "revoked device", cl, err, 0x87)

	// MQTT 3.1.1 clients get return code 5, "not authorized".
	host, port := b.hostPort()
	out, err := mosq(t, "mosquitto_pub", "-h", host, "-p", port, "-V", "mqttv311", "-i", "d1", "-u", "d1", "-P", "wrong", "-t", "dm/d1/hb", "-m", "x")
	if err == nil || !strings.Contains(strings.ToLower(out), "not authori") {
		t.Errorf("v3 wrong token: %v\n%s", err, out)
	}

	// Each refusal is counted by reason.
	for reason, min := range map[string]int{"bad_credentials": 4, "identity_mismatch": 1, "unknown_client": 1, "will_topic": 2, "revoked": 1} {
		eventually(t, 5*time.Second, func() error {
			v, err := b.metric(`otamq_rejected_total{reason="` + reason + `"}`)
			if err != nil {
				return err
			}
			if n := atoi(v); n < min {
				return errorf("rejected %s = %d, want >= %d", reason, n, min)
			}
			return nil
		})
	}
}

func TestAuthMutualTLS(t *testing.T) {
	fleetCA := newPKI(t, "fleet")
	rogueCA := newPKI(t, "rogue")
	srvCert, srvKey, _ := fleetCA.issue("otamq", true)
	b := startBroker(t, func(o *broker.Options) {
		o.TLSAddr = "127.0.0.1:0"
		o.TLSCert, o.TLSKey, o.TLSClientCA = srvCert, srvKey, fleetCA.pem
	})
	tok := b.register("d-tok", "device", "")
	b.register("d-cert", "device", "", map[string]any{"auth": "cert"})
	_, _, goodKP := fleetCA.issue("d-cert", false)
	_, _, otherKP := fleetCA.issue("d-other", false)
	_, _, rogueKP := rogueCA.issue("d-cert", false)

	roots := x509.NewCertPool()
	roots.AddCert(fleetCA.cert)
	dialTLS := func(certs ...tls.Certificate) (net.Conn, error) {
		d := tls.Dialer{Config: &tls.Config{RootCAs: roots, Certificates: certs, MinVersion: tls.VersionTLS12}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := d.DialContext(ctx, "tcp", b.TLSAddr())
		if err != nil {
			return nil, err
		}
		// Force the handshake now so a refused certificate shows here.
		tc := conn.(*tls.Conn)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, err
		}
		return conn, nil
	}

	// CN == client ID: accepted without any password.
	conn, err := dialTLS(goodKP)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dialClient(t, "", "d-cert", clientOpts{conn: conn}); err != nil {
		t.Fatalf("certificate with CN = client ID refused: %v", err)
	}

	// CN != client ID.
	conn, err = dialTLS(otherKP)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := dialClient(t, "", "d-cert", clientOpts{conn: conn})
	refusedWith(t, "certificate CN differs from client ID", cl, err, 0x87)

	// A token device may use the TLS listener without a certificate.
	conn, err = dialTLS()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dialClient(t, "", "d-tok", clientOpts{conn: conn, username: "d-tok", password: tok}); err != nil {
		t.Fatalf("token over TLS refused: %v", err)
	}

	// A certificate-only device without a certificate.
	conn, err = dialTLS()
	if err != nil {
		t.Fatal(err)
	}
	cl, err = dialClient(t, "", "d-cert", clientOpts{conn: conn, username: "d-cert", password: "x"})
	refusedWith(t, "certificate-only device without a certificate", cl, err, 0x87)

	// A certificate from another CA never gets past the handshake (TLS 1.3
	// reports the refusal on the first read, so try to use the connection).
	conn, err = dialTLS(rogueKP)
	if err == nil {
		_, err = dialClient(t, "", "d-cert", clientOpts{conn: conn})
	}
	if err == nil {
		t.Fatal("certificate from a foreign CA accepted")
	}
}
