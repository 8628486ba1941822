package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/vrep-io/vrep/hrl"
)

// pipe is a loopback: what one Conn writes, the other reads.
func pipe() (*Conn, *Conn, *bytes.Buffer) {
	var buf bytes.Buffer
	return NewConn(&buf), NewConn(&buf), &buf
}

func TestFramesRoundTrip(t *testing.T) {
	text := []byte(strings.Repeat("vrep replicates VM disks block by block. ", 2000))
	random := make([]byte, 64<<10)
	for i := range random {
		random[i] = byte(i*7919 + i>>3)
	}
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		w, r, buf := pipe()
		if err := w.SetCodec(codec); err != nil {
			t.Fatal(err)
		}
		for i, body := range [][]byte{text, random, nil, []byte("x")} {
			if err := w.WriteFrame(MsgRecords, body); err != nil {
				t.Fatal(err)
			}
			w.Flush()
			wire := buf.Len()
			typ, got, err := r.ReadFrame()
			if err != nil || typ != MsgRecords || !bytes.Equal(got, body) {
				t.Fatalf("%v body %d: %v", codec, i, err)
			}
			if codec != CodecNone && i == 0 && wire > len(text)/4 {
				t.Errorf("%v: %d bytes of text sent as %d", codec, len(text), wire)
			}
		}
	}
}

func TestDamagedFramesAreRefused(t *testing.T) {
	body := []byte(strings.Repeat("block ", 5000))
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		w, _, buf := pipe()
		w.SetCodec(codec)
		w.WriteFrame(MsgRecords, body)
		w.Flush()
		frame := append([]byte(nil), buf.Bytes()...)
		damage := map[string]func([]byte) []byte{
			"flipped bit":  func(b []byte) []byte { b[len(b)/2] ^= 0x10; return b },
			"truncated":    func(b []byte) []byte { return b[:len(b)-3] },
			"rawlen lies":  func(b []byte) []byte { binary.LittleEndian.PutUint32(b[8:], uint32(len(body)-1)); return b },
			"reserved set": func(b []byte) []byte { b[6] = 1; return b },
			"huge claim":   func(b []byte) []byte { binary.LittleEndian.PutUint32(b[0:], MaxWire+1); return b },
		}
		for name, fn := range damage {
			r := NewConn(bytes.NewBuffer(fn(append([]byte(nil), frame...))))
			if _, _, err := r.ReadFrame(); !errors.Is(err, ErrFrame) {
				t.Errorf("%v, %s: %v, want ErrFrame", codec, name, err)
			}
		}
	}
}

// A decompression bomb: a tiny zstd body that expands far past what its
// header claims is cut at the claim, never allocated in full.
func TestDecompressionBombIsBounded(t *testing.T) {
	// Streamed, so the frame does not declare its size up front.
	var zb bytes.Buffer
	enc, _ := zstd.NewWriter(&zb)
	zeros := make([]byte, 1<<20)
	for range 256 { // 256 MiB of zeros
		enc.Write(zeros)
	}
	enc.Close()
	bomb := zb.Bytes()
	var h [FrameHeaderSize]byte
	binary.LittleEndian.PutUint32(h[0:], uint32(len(bomb)))
	h[4] = byte(MsgRecords)
	h[5] = byte(CodecZstd)
	binary.LittleEndian.PutUint32(h[8:], 1<<20) // claims 1 MiB
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	r := NewConn(bytes.NewBuffer(append(h[:], bomb...)))
	if _, _, err := r.ReadFrame(); !errors.Is(err, ErrFrame) {
		t.Fatalf("bomb: %v, want ErrFrame", err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Fatalf("a bomb claiming 1 MiB made the decoder allocate %d MiB", grew>>20)
	}
}

func TestNegotiate(t *testing.T) {
	cases := []struct {
		hello     Hello
		supported uint8
		want      Codec
	}{
		{Hello{Version, AllCodecs, CodecZstd}, AllCodecs, CodecZstd},
		{Hello{Version, AllCodecs, CodecS2}, AllCodecs, CodecS2},
		{Hello{Version, AllCodecs, CodecZstd}, 1<<CodecNone | 1<<CodecS2, CodecS2},
		{Hello{Version, 1 << CodecNone, CodecZstd}, AllCodecs, CodecNone},
	}
	for _, c := range cases {
		h, err := DecodeHello(c.hello.Encode())
		if err != nil {
			t.Fatal(err)
		}
		w, err := Negotiate(h, c.supported)
		if err != nil || w.Codec != c.want {
			t.Errorf("%+v with %b: %v %v, want %v", c.hello, c.supported, w.Codec, err, c.want)
		}
		back, err := DecodeWelcome(w.Encode())
		if err != nil || back != w {
			t.Errorf("welcome round trip: %+v %v", back, err)
		}
	}
	if _, err := Negotiate(Hello{Version + 1, AllCodecs, CodecZstd}, AllCodecs); !errors.Is(err, ErrVersion) {
		t.Errorf("version mismatch: %v", err)
	}
}

func testRecords() []hrl.Record { return records(4096) }

// records is a batch with a write of n bytes (fuzz seeds stay small, so
// the fuzzer's minimization stays quick).
func records(n int) []hrl.Record {
	mk, _ := hrl.Marker{ID: 9, Time: 1, Kind: hrl.KindApp, Group: "g"}.Encode()
	return []hrl.Record{
		{Type: hrl.TypeWrite, LSN: 41, Offset: 4096, Payload: bytes.Repeat([]byte{7}, n)},
		{Type: hrl.TypeZero, LSN: 42, Offset: 8192, Span: 4096, Flags: hrl.FlagNoHole},
		{Type: hrl.TypeMarker, LSN: 43, Payload: mk},
		{Type: hrl.TypeTrim, LSN: 44, Offset: 1 << 20, Span: 1 << 16},
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	body := AppendRecords(nil, "vm1/disk0", testRecords())
	var got []string
	disk, err := DecodeRecords(body, func(r hrl.Record) error {
		got = append(got, fmt.Sprintf("%v/%d/%d/%d", r.Type, r.LSN, r.Offset, len(r.Payload)))
		return nil
	})
	if err != nil || disk != "vm1/disk0" || len(got) != 4 || got[0] != "write/41/4096/4096" {
		t.Fatalf("%s %v %v", disk, got, err)
	}
	bad := map[string][]byte{
		"flipped payload": func() []byte { b := append([]byte(nil), body...); b[100] ^= 1; return b }(),
		"bad disk name":   AppendRecords(nil, "../etc", testRecords()),
		"gap in LSNs":     AppendRecords(nil, "vm1/disk0", []hrl.Record{testRecords()[0], testRecords()[2]}),
		"trailing bytes":  append(append([]byte(nil), body...), 0),
		"count too big": func() []byte {
			b := append([]byte(nil), body...)
			binary.LittleEndian.PutUint32(b[11:], 1<<30)
			return b
		}(),
	}
	for name, b := range bad {
		if _, err := DecodeRecords(b, func(hrl.Record) error { return nil }); !errors.Is(err, ErrFrame) {
			t.Errorf("%s: %v, want ErrFrame", name, err)
		}
	}
}

func FuzzReadFrame(f *testing.F) {
	for _, codec := range []Codec{CodecNone, CodecS2, CodecZstd} {
		w, _, buf := pipe()
		w.SetCodec(codec)
		w.WriteFrame(MsgRecords, AppendRecords(nil, "vm1/disk0", records(64)))
		w.Flush()
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewConn(bytes.NewBuffer(in))
		for {
			typ, body, err := r.ReadFrame()
			if err != nil {
				if !errors.Is(err, ErrFrame) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("unclassified error: %v", err)
				}
				return
			}
			if typ == MsgRecords {
				DecodeRecords(body, func(hrl.Record) error { return nil })
			}
		}
	})
}

func FuzzDecodeRecords(f *testing.F) {
	f.Add(AppendRecords(nil, "vm1/disk0", records(64)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var recs []hrl.Record
		disk, err := DecodeRecords(b, func(r hrl.Record) error {
			r.Payload = append([]byte(nil), r.Payload...)
			recs = append(recs, r)
			return nil
		})
		if err != nil {
			return
		}
		// What decodes re-encodes to the same bytes.
		if again := AppendRecords(nil, disk, recs); !bytes.Equal(again, b) {
			t.Fatal("decode/encode round trip differs")
		}
	})
}

// FuzzDecodeRecordsRange: a coalesced batch either decodes to records
// with increasing LSNs inside its range, re-encoding to the same bytes,
// or is refused with ErrFrame.
func FuzzDecodeRecordsRange(f *testing.F) {
	recs := records(16) // LSNs 41 on; skip the second
	f.Add(AppendRecordsRange(nil, recs[0].LSN, recs[len(recs)-1].LSN+3, "vm1/disk0", append(recs[:1:1], recs[2:]...)))
	f.Fuzz(func(t *testing.T, b []byte) {
		var got []hrl.Record
		disk, from, through, err := DecodeRecordsRange(b, func(r hrl.Record) error {
			r.Payload = append([]byte(nil), r.Payload...)
			got = append(got, r)
			return nil
		})
		if err != nil {
			if !errors.Is(err, ErrFrame) {
				t.Fatalf("error not ErrFrame: %v", err)
			}
			return
		}
		prev := from - 1
		for _, r := range got {
			if r.LSN <= prev || r.LSN > through {
				t.Fatalf("LSN %d after %d in range %d..%d", r.LSN, prev, from, through)
			}
			prev = r.LSN
		}
		if again := AppendRecordsRange(nil, from, through, disk, got); !bytes.Equal(again, b) {
			t.Fatal("decode/encode round trip differs")
		}
	})
}
