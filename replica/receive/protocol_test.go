package receive

import (
	"crypto/tls"
	"errors"
	"github.com/vrep-io/vrep/replica/wire"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/pki"
)

// TestRecordsForAnotherDiskRefused: a Records frame names its disk; on a
// stream opened for vm1/disk0, records for vm1/disk1 are a malformed
// request, refused before anything is applied to either disk.
func TestRecordsForAnotherDiskRefused(t *testing.T) {
	rg := newRig(t, 4<<20)
	addr, _ := rg.serve(t, "", map[string]string{"primary1": ""})
	cfg, err := pki.ClientConfig(rg.pkiDir, "primary1", "replica1")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := wire.NewConn(nc)
	defer c.Close()
	c.WriteFrame(wire.MsgHello, wire.Hello{Version: wire.Version, Codecs: wire.AllCodecs, Prefer: wire.CodecNone}.Encode())
	c.Flush()
	if _, err := wire.Expect(c, wire.MsgWelcome); err != nil {
		t.Fatal(err)
	}
	c.WriteFrame(wire.MsgOpenDisk, wire.EncodeOpenDisk("vm1/disk0", 4<<20))
	c.Flush()
	if _, err := wire.Expect(c, wire.MsgDiskState); err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 4096)
	for i := range payload {
		payload[i] = 0xAB
	}
	recs := []hrl.Record{{LSN: 1, Type: hrl.TypeWrite, Offset: 0, Payload: payload}}
	c.WriteFrame(wire.MsgRecords, wire.AppendRecords(nil, "vm1/disk1", recs))
	c.Flush()
	_, err = wire.Expect(c, wire.MsgAck)
	var re *wire.RemoteError
	if !errors.As(err, &re) || re.Code != wire.CodeBadRequest || !strings.Contains(re.Msg, "vm1/disk1") {
		t.Fatalf("records for another disk answered with %v, want a bad-request error naming vm1/disk1", err)
	}
	if _, err := os.Stat(filepath.Join(rg.data, "primary1", "vm1", "disk1")); err == nil {
		t.Fatal("something was written for vm1/disk1")
	}
	img, err := os.ReadFile(filepath.Join(rg.data, "primary1", "vm1", "disk0", "image"))
	if err == nil && len(img) >= 4096 && img[0] == 0xAB {
		t.Fatal("the records were applied to vm1/disk0")
	}
}
