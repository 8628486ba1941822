package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/vrep-io/vrep/blockdev"
)

// Structured replies and metadata contexts (proto.md "Structured reply
// chunk message", "Metadata querying", NBD_OPT_STRUCTURED_REPLY,
// NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT,
// NBD_CMD_BLOCK_STATUS).
//
// Every export offers base:allocation, from its device's
// blockdev.Mapper (all data for a device without one). An export may
// offer more contexts of its own (Export.Contexts). Query syntax:
//
//	base:allocation        the allocation of the export (SET and LIST)
//	base:                  every base: context (LIST only)
//	NAMESPACE:LEAF         an export's own context, by its full name
//	PREFIX:                (LIST only) every own context whose name
//	                       starts with the query, e.g. "vrep:"
//
// Names of unknown namespaces are ignored, as the spec requires; a
// query without a namespace, or with bytes that are no UTF-8 string,
// is NBD_REP_ERR_INVALID.

// BaseAllocation is the metadata context the NBD spec defines.
const BaseAllocation = "base:allocation"

// Context is a metadata context an export offers besides
// base:allocation.
type Context struct {
	// Name is the full name, namespace first ("vrep:changed:ID").
	Name string
	// Status describes a prefix of [off, off+n) (at least one byte) as
	// consecutive runs of NBD status flags, the context's meaning.
	Status func(off, n int64) ([]Status, error)
}

// Status is a run of an export with the flags a context gives it.
type Status struct {
	Length int64
	Flags  uint32
}

// metaContext is a context selected on a connection.
type metaContext struct {
	id     uint32
	name   string
	status func(off, n int64) ([]Status, error)
}

// Limits of the metadata options.
const (
	// maxString is the spec's limit on a string (export name, query).
	maxString = 4096
	// maxDescriptors bounds the descriptors of one block status chunk
	// (the spec asks for at most 2^20); a client asks again from where
	// a reply stopped.
	maxDescriptors = 1 << 16
)

var errBadMeta = errors.New("nbd: malformed metadata context request")

// metaRequest is a decoded NBD_OPT_LIST_META_CONTEXT or
// NBD_OPT_SET_META_CONTEXT.
type metaRequest struct {
	export  string
	queries []string
}

// decodeMeta decodes a metadata option's data: export name, then a
// count of queries, each a length and a string, and nothing after.
func decodeMeta(data []byte) (metaRequest, error) {
	var r metaRequest
	name, rest, err := decodeString(data)
	if err != nil {
		return r, err
	}
	r.export = name
	if len(rest) < 4 {
		return r, fmt.Errorf("%w: no query count", errBadMeta)
	}
	count := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	// Each query takes four bytes at least: a count past that is a lie,
	// and nothing is allocated for it.
	if uint64(count) > uint64(len(rest)/4) {
		return r, fmt.Errorf("%w: %d queries in %d bytes", errBadMeta, count, len(rest))
	}
	r.queries = make([]string, 0, count)
	for range count {
		var q string
		if q, rest, err = decodeString(rest); err != nil {
			return r, err
		}
		if !validContextName(q) {
			return r, fmt.Errorf("%w: query %q has no namespace", errBadMeta, q)
		}
		r.queries = append(r.queries, q)
	}
	if len(rest) != 0 {
		return r, fmt.Errorf("%w: %d bytes after the queries", errBadMeta, len(rest))
	}
	return r, nil
}

// decodeString reads a 32-bit length and that many bytes of a string.
func decodeString(b []byte) (string, []byte, error) {
	if len(b) < 4 {
		return "", nil, fmt.Errorf("%w: short string length", errBadMeta)
	}
	n := binary.BigEndian.Uint32(b)
	if n > maxString || uint64(n) > uint64(len(b)-4) {
		return "", nil, fmt.Errorf("%w: string of %d bytes in %d", errBadMeta, n, len(b)-4)
	}
	s := string(b[4 : 4+n])
	if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
		return "", nil, fmt.Errorf("%w: string is not UTF-8 text", errBadMeta)
	}
	return s, b[4+n:], nil
}

// validContextName reports whether q starts with a namespace: printable
// characters other than a colon or a space, then a colon.
func validContextName(q string) bool {
	i := strings.IndexByte(q, ':')
	if i <= 0 {
		return false
	}
	for _, r := range q[:i] {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) {
			return false
		}
	}
	return true
}

// contexts returns the contexts e offers, base:allocation first.
func contexts(e *Export) []metaContext {
	dev := e.Device
	out := []metaContext{{name: BaseAllocation, status: func(off, n int64) ([]Status, error) {
		ext, err := blockdev.Map(dev, off, n)
		if err != nil {
			return nil, err
		}
		st := make([]Status, len(ext))
		for i, x := range ext {
			st[i].Length = x.Length
			if x.Hole {
				st[i].Flags |= stateHole
			}
			if x.Zero {
				st[i].Flags |= stateZero
			}
		}
		return st, nil
	}}}
	if e.Contexts != nil {
		for _, x := range e.Contexts() {
			out = append(out, metaContext{name: x.Name, status: x.Status})
		}
	}
	return out
}

// matches reports whether query q selects (or, listing, lists) name.
func matches(q, name string, listing bool) bool {
	if q == name {
		return true
	}
	return listing && strings.HasSuffix(q, ":") && strings.HasPrefix(name, q)
}

// optStructured answers NBD_OPT_STRUCTURED_REPLY.
func (c *conn) optStructured(data []byte) {
	switch {
	case len(data) != 0:
		c.optReply(optStructured, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
	case c.structured:
		c.optReply(optStructured, repErrInvalid, []byte("structured replies are negotiated already"))
	default:
		c.structured = true
		c.optReply(optStructured, repAck, nil)
	}
}

// optMeta answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
func (c *conn) optMeta(opt uint32, data []byte) {
	set := opt == optSetMeta
	if set {
		// A SET replaces the selection even when it fails.
		c.meta, c.metaExport = nil, nil
	}
	if !c.structured {
		c.optReply(opt, repErrInvalid, []byte("negotiate structured replies first"))
		return
	}
	r, err := decodeMeta(data)
	if err != nil {
		c.optReply(opt, repErrInvalid, []byte(err.Error()))
		return
	}
	e := c.s.lookup(r.export)
	if e == nil {
		c.optReply(opt, repErrUnknown, []byte("no such export: "+r.export))
		return
	}
	var chosen []metaContext
	for _, mc := range contexts(e) {
		pick := !set && len(r.queries) == 0
		for _, q := range r.queries {
			pick = pick || matches(q, mc.name, !set)
		}
		if pick {
			chosen = append(chosen, mc)
		}
	}
	for i := range chosen {
		if set {
			chosen[i].id = uint32(i + 1)
		}
		b := binary.BigEndian.AppendUint32(nil, chosen[i].id)
		c.optReply(opt, repMeta, append(b, chosen[i].name...))
	}
	if set && len(chosen) > 0 {
		c.meta, c.metaExport = chosen, e
	}
	c.optReply(opt, repAck, nil)
}

// choose makes e the connection's export for transmission: contexts
// selected for another export do not carry over.
func (c *conn) choose(e *Export) {
	if c.metaExport != e {
		c.meta = nil
	}
}

// tflags are the transmission flags of e on this connection.
func (c *conn) tflags(e *Export) uint16 {
	f := transmissionFlags(e)
	if c.structured {
		f |= tfSendDF // a read is always answered with one chunk
	}
	return f
}

// chunk returns the header of a structured reply chunk.
func chunk(flags, typ uint16, cookie uint64, length int) []byte {
	return putChunk(make([]byte, 20), flags, typ, cookie, length)
}

// putChunk writes a chunk header into h[:20] and returns it.
func putChunk(h []byte, flags, typ uint16, cookie uint64, length int) []byte {
	binary.BigEndian.PutUint32(h[0:], magicStructured)
	binary.BigEndian.PutUint16(h[4:], flags)
	binary.BigEndian.PutUint16(h[6:], typ)
	binary.BigEndian.PutUint64(h[8:], cookie)
	binary.BigEndian.PutUint32(h[16:], uint32(length))
	return h[:20]
}

// errText is the message sent with an error chunk.
func errText(code uint32) string {
	switch code {
	case errPerm:
		return "the export is read-only"
	case errInval:
		return "invalid request"
	case errNoSpc:
		return "the request runs past the end of the export"
	case errShutdown:
		return "the server is shutting down"
	default:
		return "I/O error"
	}
}

// replyTo answers q with code, and for a successful read its data: a
// simple reply, or once structured replies are negotiated, one chunk
// (OFFSET_DATA or ERROR) for a read or an error.
func (c *conn) replyTo(q request, code uint32, data []byte, flush bool) {
	if !c.structured || (code == 0 && q.typ != cmdRead) {
		c.reply(q.cookie, code, data, flush)
		return
	}
	if code != 0 {
		msg := errText(code)
		p := binary.BigEndian.AppendUint32(nil, code)
		p = binary.BigEndian.AppendUint16(p, uint16(len(msg)))
		p = append(p, msg...)
		c.send(flush, chunk(rfDone, rtError, q.cookie, len(p)), p)
		return
	}
	// The read path: one header (chunk and offset) per reply, as the
	// simple reply has.
	var h [28]byte
	putChunk(h[:], rfDone, rtOffsetData, q.cookie, 8+len(data))
	binary.BigEndian.PutUint64(h[20:], q.off)
	c.send(flush, h[:], data)
}

// blockStatus answers NBD_CMD_BLOCK_STATUS: one chunk per selected
// context, the last marked done; with REQ_ONE one descriptor each.
func (c *conn) blockStatus(q request) error {
	off, n := int64(q.off), int64(q.length)
	parts := make([][]byte, 0, 2*len(c.meta))
	for i, mc := range c.meta {
		st, err := mc.status(off, n)
		if err != nil {
			return fmt.Errorf("%s: %w", mc.name, err)
		}
		p := binary.BigEndian.AppendUint32(make([]byte, 0, 4+8*min(len(st)+1, maxDescriptors)), mc.id)
		var covered int64
		for _, s := range st {
			length := min(s.Length, n-covered)
			if length <= 0 {
				break
			}
			p = binary.BigEndian.AppendUint32(p, uint32(length))
			p = binary.BigEndian.AppendUint32(p, s.Flags)
			covered += length
			if q.flags&cfReqOne != 0 || len(p) >= 4+8*maxDescriptors {
				break
			}
		}
		if covered == 0 {
			// NB: no guess: for a changed-blocks context, 0 would claim
			// the range unchanged.
			return fmt.Errorf("%s: no status for %d bytes at %d", mc.name, n, off)
		}
		var flags uint16
		if i == len(c.meta)-1 {
			flags = rfDone
		}
		parts = append(parts, chunk(flags, rtBlockStatus, q.cookie, len(p)), p)
	}
	c.send(true, parts...)
	return nil
}
