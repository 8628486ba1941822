package vss

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// GuestAgent quiesces a VM's file systems through its QEMU guest agent
// (qemu-ga), over the agent's unix socket on the host: guest-sync, then
// guest-fsfreeze-freeze / guest-fsfreeze-thaw / guest-fsfreeze-status.
type GuestAgent struct {
	Socket string
}

// maxReply bounds one reply line from the agent.
const maxReply = 1 << 20

// Name says which agent.
func (a GuestAgent) Name() string { return "guest agent " + a.Socket }

// Freeze freezes the guest's file systems.
func (a GuestAgent) Freeze(ctx context.Context) error {
	_, err := a.call(ctx, "guest-fsfreeze-freeze")
	return err
}

// Thaw thaws them; an agent that reports them thawed already is fine.
func (a GuestAgent) Thaw(ctx context.Context) error {
	_, err := a.call(ctx, "guest-fsfreeze-thaw")
	if err == nil {
		return nil
	}
	if st, serr := a.Status(ctx); serr == nil && st == "thawed" {
		return nil
	}
	return err
}

// Status returns "frozen" or "thawed".
func (a GuestAgent) Status(ctx context.Context) (string, error) {
	raw, err := a.call(ctx, "guest-fsfreeze-status")
	if err != nil {
		return "", err
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fmt.Errorf("guest agent: status %s: %w", raw, err)
	}
	return s, nil
}

type agentReply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// call syncs with the agent, then runs one command and returns its
// "return" value.
func (a GuestAgent) call(ctx context.Context, command string) (json.RawMessage, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", a.Socket)
	if err != nil {
		return nil, fmt.Errorf("guest agent: %w", err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(30 * time.Second))
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	r := bufio.NewReaderSize(c, 64<<10)
	// guest-sync with a fresh id: replies left over from an earlier,
	// abandoned exchange are skipped until ours comes back.
	var b [4]byte
	rand.Read(b[:])
	id := int64(binary.LittleEndian.Uint32(b[:]) & 0x7fffffff)
	if err := send(c, map[string]any{"execute": "guest-sync", "arguments": map[string]any{"id": id}}); err != nil {
		return nil, err
	}
	for {
		rep, err := readReply(r)
		if err != nil {
			return nil, err
		}
		var got int64
		if rep.Error == nil && json.Unmarshal(rep.Return, &got) == nil && got == id {
			break
		}
	}
	if err := send(c, map[string]any{"execute": command}); err != nil {
		return nil, err
	}
	rep, err := readReply(r)
	if err != nil {
		return nil, err
	}
	if rep.Error != nil {
		return nil, fmt.Errorf("guest agent: %s: %s: %s", command, rep.Error.Class, rep.Error.Desc)
	}
	return rep.Return, nil
}

func send(c net.Conn, msg any) error {
	b, _ := json.Marshal(msg)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("guest agent: %w", err)
	}
	return nil
}

// readReply reads one JSON line of at most maxReply bytes.
func readReply(r *bufio.Reader) (agentReply, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > maxReply {
			return agentReply{}, errors.New("guest agent: reply too long")
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return agentReply{}, fmt.Errorf("guest agent: %w", err)
		}
	}
	line = bytes.TrimSpace(line)
	var rep agentReply
	if err := json.Unmarshal(line, &rep); err != nil {
		return agentReply{}, fmt.Errorf("guest agent: malformed reply: %w", err)
	}
	return rep, nil
}
