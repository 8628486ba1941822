package nbd

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/vrep-io/vrep/blockdev"
)

// metaData encodes the data of a metadata option.
func metaData(export string, queries ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = binary.BigEndian.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// metaReplies sends a metadata option and returns the context names
// (with their ids) it answered, and the final reply type.
func (cl *client) metaOption(opt uint32, data []byte) (ctx map[string]uint32, final uint32) {
	cl.t.Helper()
	cl.option(opt, data)
	ctx = map[string]uint32{}
	for {
		typ, p := cl.optReply()
		if typ != repMeta {
			return ctx, typ
		}
		ctx[string(p[4:])] = binary.BigEndian.Uint32(p)
	}
}

// msg is one reply message: simple, or a structured chunk.
type msg struct {
	structured bool
	flags, typ uint16
	cookie     uint64
	code       uint32 // simple replies
	payload    []byte // chunks
}

func (cl *client) next() msg {
	cl.t.Helper()
	var h [4]byte
	cl.read(h[:])
	switch binary.BigEndian.Uint32(h[:]) {
	case magicReply:
		var r [12]byte
		cl.read(r[:])
		return msg{code: binary.BigEndian.Uint32(r[:]), cookie: binary.BigEndian.Uint64(r[4:])}
	case magicStructured:
		var r [16]byte
		cl.read(r[:])
		m := msg{structured: true, flags: binary.BigEndian.Uint16(r[:]), typ: binary.BigEndian.Uint16(r[2:]), cookie: binary.BigEndian.Uint64(r[4:])}
		m.payload = make([]byte, binary.BigEndian.Uint32(r[12:]))
		cl.read(m.payload)
		return m
	}
	cl.t.Fatalf("bad reply magic % x", h)
	return msg{}
}

// errCode is the error of a reply message, simple or an error chunk.
func (m msg) errCode() uint32 {
	if m.structured && m.typ == rtError {
		return binary.BigEndian.Uint32(m.payload)
	}
	return m.code
}

// status sends a block status request and returns its descriptors per
// context id, or the error.
func (cl *client) status(flags uint16, off uint64, n uint32) (map[uint32][][2]uint32, uint32) {
	cl.t.Helper()
	cl.write(reqBytes(cmdStatus, flags, 42, off, n))
	out := map[uint32][][2]uint32{}
	for {
		m := cl.next()
		if m.cookie != 42 {
			cl.t.Fatalf("reply for cookie %d", m.cookie)
		}
		if code := m.errCode(); code != 0 || !m.structured {
			return nil, code
		}
		if m.typ != rtBlockStatus || (len(m.payload)-4)%8 != 0 || len(m.payload) < 12 {
			cl.t.Fatalf("bad block status chunk: type %d, %d bytes", m.typ, len(m.payload))
		}
		id := binary.BigEndian.Uint32(m.payload)
		for p := m.payload[4:]; len(p) > 0; p = p[8:] {
			out[id] = append(out[id], [2]uint32{binary.BigEndian.Uint32(p), binary.BigEndian.Uint32(p[4:])})
		}
		if m.flags&rfDone != 0 {
			return out, 0
		}
	}
}

// layoutDev is a memory device with data at [1 MiB, 2 MiB) and
// [5 MiB, 5 MiB + 4 KiB); the rest is zero blocks, which Mem maps as holes.
func layoutDev() *blockdev.Mem {
	dev := blockdev.NewMem(testSize)
	dev.WriteAt(bytes.Repeat([]byte{7}, 1<<20), 1<<20)
	dev.WriteAt(bytes.Repeat([]byte{8}, 4096), 5<<20)
	return dev
}

func structuredMeta(export string, queries ...string) func(cl *client) {
	return func(cl *client) {
		cl.option(optStructured, nil)
		if typ, _ := cl.optReply(); typ != repAck {
			cl.t.Fatalf("NBD_OPT_STRUCTURED_REPLY: %#x", typ)
		}
		ctx, final := cl.metaOption(optSetMeta, metaData(export, queries...))
		if final != repAck || len(ctx) != len(queries) {
			cl.t.Fatalf("SET_META_CONTEXT %q: %v, final %#x", queries, ctx, final)
		}
	}
}

// TestBlockStatus: base:allocation reports the device's layout, REQ_ONE
// gives one extent, reads come as one OFFSET_DATA chunk, and bad block
// status requests get an error chunk while the connection goes on.
func TestBlockStatus(t *testing.T) {
	_, sock := serve(t, layoutDev(), false)
	cl := dialWith(t, sock, "vm1/disk0", structuredMeta("vm1/disk0", BaseAllocation))
	if cl.tf&tfSendDF == 0 {
		t.Error("NBD_FLAG_SEND_DF not offered with structured replies")
	}
	got, code := cl.status(0, 0, testSize)
	if code != 0 || len(got) != 1 {
		t.Fatalf("block status: errno %d, %v", code, got)
	}
	const hz = stateHole | stateZero
	want := [][2]uint32{{1 << 20, hz}, {1 << 20, 0}, {3 << 20, hz}, {4096, 0}, {testSize - 5<<20 - 4096, hz}}
	if fmt.Sprint(got[1]) != fmt.Sprint(want) {
		t.Fatalf("base:allocation = %v, want %v", got[1], want)
	}
	// Unaligned, and REQ_ONE.
	if got, _ := cl.status(0, 1<<20+100, 5<<20); fmt.Sprint(got[1]) != fmt.Sprint([][2]uint32{{1<<20 - 100, 0}, {3 << 20, hz}, {4096, 0}, {1<<20 - 4096 + 100, hz}}) {
		t.Fatalf("unaligned block status = %v", got[1])
	}
	if got, _ := cl.status(cfReqOne, 0, testSize); fmt.Sprint(got[1]) != fmt.Sprint([][2]uint32{{1 << 20, hz}}) {
		t.Fatalf("REQ_ONE block status = %v", got[1])
	}
	// Bad requests: error chunks, the connection goes on.
	for _, p := range []struct {
		name  string
		flags uint16
		off   uint64
		n     uint32
	}{
		{"past the end", 0, testSize - 4096, 8192},
		{"at the end", 0, testSize, 1},
		{"offset overflow", 0, ^uint64(0) - 10, 4096},
		{"zero length", 0, 0, 0},
		{"unknown flag", 1 << 9, 0, 4096},
		{"DF on block status", cfDF, 0, 4096},
	} {
		if _, code := cl.status(p.flags, p.off, p.n); code != errInval {
			t.Errorf("%s: errno %d, want EINVAL", p.name, code)
		}
	}
	// A read is one OFFSET_DATA chunk; a bad read an error chunk.
	cl.write(reqBytes(cmdRead, 0, 9, 1<<20, 4096))
	m := cl.next()
	if !m.structured || m.typ != rtOffsetData || m.flags&rfDone == 0 || binary.BigEndian.Uint64(m.payload) != 1<<20 || !bytes.Equal(m.payload[8:], bytes.Repeat([]byte{7}, 4096)) {
		t.Fatalf("structured read: %+v", m)
	}
	cl.write(reqBytes(cmdRead, 0, 10, testSize, 4096))
	if m := cl.next(); !m.structured || m.typ != rtError || m.errCode() != errInval || m.flags&rfDone == 0 {
		t.Fatalf("bad structured read: %+v", m)
	}
	if code, _ := cl.do(cmdWrite, 0, 0, bytes.Repeat([]byte{1}, 4096), 4096); code != 0 {
		t.Fatalf("write after bad requests: errno %d", code)
	}
	if got, _ := cl.status(cfReqOne, 0, 8192); fmt.Sprint(got[1]) != fmt.Sprint([][2]uint32{{4096, 0}}) {
		t.Fatalf("block status after a write = %v", got[1])
	}
}

// TestMetaNegotiation: the spec's answers to metadata options asked out
// of order, twice, malformed, or for another export.
func TestMetaNegotiation(t *testing.T) {
	s, sock := serve(t, layoutDev(), false)
	s.Add(Export{Name: "other", Device: blockdev.NewMem(testSize), Contexts: func() []Context {
		return []Context{{Name: "vrep:changed:p1", Status: func(off, n int64) ([]Status, error) {
			return []Status{{Length: n, Flags: 1}}, nil
		}}}
	}})
	var plain *client
	plain = dialWith(t, sock, "vm1/disk0", func(cl *client) {
		if _, final := cl.metaOption(optSetMeta, metaData("vm1/disk0", BaseAllocation)); final != repErrInvalid {
			t.Errorf("SET_META_CONTEXT before structured replies: %#x, want NBD_REP_ERR_INVALID", final)
		}
		if _, final := cl.metaOption(optListMeta, metaData("vm1/disk0")); final != repErrInvalid {
			t.Errorf("LIST_META_CONTEXT before structured replies: %#x, want NBD_REP_ERR_INVALID", final)
		}
		cl.option(optStructured, []byte{0})
		if typ, _ := cl.optReply(); typ != repErrInvalid {
			t.Errorf("NBD_OPT_STRUCTURED_REPLY with data: %#x", typ)
		}
		cl.option(optStructured, nil)
		if typ, _ := cl.optReply(); typ != repAck {
			t.Errorf("NBD_OPT_STRUCTURED_REPLY: %#x", typ)
		}
		cl.option(optStructured, nil)
		if typ, _ := cl.optReply(); typ != repErrInvalid {
			t.Errorf("NBD_OPT_STRUCTURED_REPLY twice: %#x, want NBD_REP_ERR_INVALID", typ)
		}
		list := func(export string, q ...string) string {
			ctx, final := cl.metaOption(optListMeta, metaData(export, q...))
			var names []string
			for n := range ctx {
				names = append(names, n)
			}
			return fmt.Sprintf("%#x %s", final, strings.Join(sortStrings(names), ","))
		}
		for _, c := range []struct {
			export string
			q      []string
			want   string
		}{
			{"vm1/disk0", nil, "0x1 base:allocation"},
			{"vm1/disk0", []string{"base:"}, "0x1 base:allocation"},
			{"vm1/disk0", []string{"base:nothing", "x-foo:bar", "qemu:"}, "0x1 "},
			{"other", nil, "0x1 base:allocation,vrep:changed:p1"},
			{"other", []string{"vrep:"}, "0x1 vrep:changed:p1"},
			{"nope", nil, fmt.Sprintf("%#x ", repErrUnknown)},
			{"vm1/disk0", []string{"no-namespace"}, fmt.Sprintf("%#x ", repErrInvalid)},
			{"vm1/disk0", []string{":empty"}, fmt.Sprintf("%#x ", repErrInvalid)},
			{"vm1/disk0", []string{"base:\x00"}, fmt.Sprintf("%#x ", repErrInvalid)},
			{"vm1/disk0", []string{strings.Repeat("x", 5000) + ":a"}, fmt.Sprintf("%#x ", repErrInvalid)},
		} {
			if got := list(c.export, c.q...); got != c.want {
				t.Errorf("LIST %q %q = %s, want %s", c.export, c.q, got, c.want)
			}
		}
		// Malformed framing.
		bad := metaData("vm1/disk0", BaseAllocation)
		countTooLarge := append([]byte(nil), bad...)
		binary.BigEndian.PutUint32(countTooLarge[4+9:], 2)
		for name, data := range map[string][]byte{
			"count too large":  countTooLarge,
			"trailing bytes":   append(append([]byte(nil), bad...), 1),
			"truncated query":  bad[:len(bad)-3],
			"lying count":      append(metaData("vm1/disk0")[:13], 0xff, 0xff, 0xff, 0xff),
			"name past option": {0, 0, 0, 99, 'v'},
		} {
			if _, final := cl.metaOption(optSetMeta, data); final != repErrInvalid {
				t.Errorf("SET_META_CONTEXT %s: %#x, want NBD_REP_ERR_INVALID", name, final)
			}
		}
		// Contexts selected for another export do not carry over to GO.
		if ctx, final := cl.metaOption(optSetMeta, metaData("other", BaseAllocation, "vrep:changed:p1", "base:", "vrep:nope")); final != repAck || len(ctx) != 2 || ctx[BaseAllocation] == ctx["vrep:changed:p1"] {
			t.Errorf("SET_META_CONTEXT on other: %v %#x", ctx, final)
		}
	})
	if _, code := plain.status(0, 0, 4096); code != errInval {
		t.Errorf("block status with contexts of another export: errno %d, want EINVAL", code)
	}
	plain.write(reqBytes(cmdRead, 0, 7, 0, 0))
	if m := plain.next(); !m.structured || m.errCode() != errInval {
		t.Errorf("zero-length read with structured replies: %+v, want an EINVAL error chunk", m)
	}
	// Both contexts on the export that has them: one chunk each.
	cl := dialWith(t, sock, "other", structuredMeta("other", BaseAllocation, "vrep:changed:p1"))
	got, code := cl.status(0, 0, 65536)
	if code != 0 || len(got) != 2 {
		t.Fatalf("two contexts: errno %d, %v", code, got)
	}
}

func sortStrings(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

// TestRealClientsMap: nbdinfo --map and qemu-img map read the layout
// through base:allocation.
func TestRealClientsMap(t *testing.T) {
	for _, tool := range []string{"nbdinfo", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	_, sock := serve(t, layoutDev(), false)
	uri := "nbd+unix:///vm1/disk0?socket=" + sock
	out, err := exec.Command("nbdinfo", "--map", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --map: %v\n%s", err, out)
	}
	want := fmt.Sprintf("%10d %10d %d %s\n", 0, 1<<20, 3, "hole,zero")
	if !strings.HasPrefix(strings.Join(strings.Fields(string(out)), " "), strings.Join(strings.Fields(want), " ")) {
		t.Errorf("nbdinfo --map:\n%s", out)
	}
	fields := strings.Join(strings.Fields(string(out)), " ")
	for _, w := range []string{"0 1048576 3 hole,zero", "1048576 1048576 0 data", "2097152 3145728 3 hole,zero", "5242880 4096 0 data", "5246976 11530240 3 hole,zero"} {
		if !strings.Contains(fields, w) {
			t.Errorf("nbdinfo --map lacks %q:\n%s", w, out)
		}
	}
	out, err = exec.Command("qemu-img", "map", "--output=json", uri).Output()
	if err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	var ext []struct {
		Start, Length int64
		Data, Zero    bool
	}
	if err := json.Unmarshal(out, &ext); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	var data []string
	for _, e := range ext {
		if e.Data {
			data = append(data, fmt.Sprintf("%d+%d", e.Start, e.Length))
		}
	}
	if got := strings.Join(data, " "); got != "1048576+1048576 5242880+4096" {
		t.Errorf("qemu-img map data extents = %s\n%s", got, out)
	}
}
