package statefile

import (
	"bytes"
	"errors"
	"testing"
)

func TestRoundTripAndDamage(t *testing.T) {
	body := []byte("0123456789abcdef")
	b := Encode("VREPTEST", body)
	got, err := Decode(b, "VREPTEST", len(body))
	if err != nil || !bytes.Equal(got, body) {
		t.Fatalf("round trip: %q, %v", got, err)
	}
	if _, err := Decode(b, "VREPTEST", -1); err != nil {
		t.Fatalf("any length: %v", err)
	}
	for i := range b {
		c := bytes.Clone(b)
		c[i] ^= 0x40
		if _, err := Decode(c, "VREPTEST", len(body)); !errors.Is(err, ErrBad) {
			t.Fatalf("a flipped bit at %d passed", i)
		}
	}
	for _, bad := range [][]byte{nil, b[:13], b[:len(b)-1], append(bytes.Clone(b), 0)} {
		if _, err := Decode(bad, "VREPTEST", len(body)); !errors.Is(err, ErrBad) {
			t.Fatalf("%d bytes passed", len(bad))
		}
	}
	if _, err := Decode(b, "VREPOTHR", len(body)); !errors.Is(err, ErrBad) {
		t.Fatal("another kind's magic passed")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(Encode("VREPTEST", []byte("x")))
	f.Fuzz(func(t *testing.T, b []byte) {
		body, err := Decode(b, "VREPTEST", -1)
		if err == nil && !bytes.Equal(Encode("VREPTEST", body), b) {
			t.Fatal("decoded a file that does not re-encode to itself")
		}
	})
}
