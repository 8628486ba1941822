package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/waitfor"
)

// qemuIO runs qemu-io commands against an export and fails on any error
// or pattern mismatch.
func qemuIO(t *testing.T, uri string, cmds ...string) string {
	t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, "qemu-io", append(args, uri)...)
	if strings.Contains(out, "fail") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io %v:\n%s", cmds, out)
	}
	return out
}

func TestQemuIOPatterns(t *testing.T) {
	need(t, "qemu-io")
	e := newEnv(t, 64<<20)
	d := e.start(t)
	u := e.uri("vm1/disk0")
	qemuIO(t, u,
		"write -P 0xa1 0 1M",
		"write -P 0xb2 4095 3",    // unaligned, across a block boundary
		"write -f -P 0xc3 1M 64k", // FUA
		"flush",
		"discard 2M 1M",
		"write -z 3M 128k",
		"write -P 0xd4 5M 4M", // a large request
	)
	qemuIO(t, u,
		"read -P 0xa1 0 4095",
		"read -P 0xb2 4095 3",
		"read -P 0xa1 4098 1044478",
		"read -P 0xc3 1M 64k",
		"read -P 0 2M 1M",
		"read -P 0 3M 128k",
		"read -P 0xd4 5M 4M",
	)
	// A mismatch is caught: the checks above are not vacuous.
	if out, _ := exec.Command("qemu-io", "-f", "raw", "-c", "read -P 0xee 0 4k", u).CombinedOutput(); !strings.Contains(string(out), "fail") {
		t.Fatalf("qemu-io did not report a planted mismatch:\n%s", out)
	}
	if err := d.stop(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, d.stderr)
	}
	// After a clean stop the image file itself holds every write.
	img, _ := os.ReadFile(e.img)
	if !bytes.Equal(img[5<<20:9<<20], bytes.Repeat([]byte{0xd4}, 4<<20)) || img[4095] != 0xb2 || img[2<<20] != 0 {
		t.Fatal("the image does not hold the writes after SIGTERM")
	}
}

func TestQemuImgConvertCompare(t *testing.T) {
	need(t, "qemu-img")
	e := newEnv(t, 32<<20)
	e.start(t)
	u := e.uri("vm1/disk0")
	src := filepath.Join(e.dir, "src.img")
	data := randomFile(t, src, 32<<20)
	clear(data[8<<20 : 12<<20]) // a hole for qemu-img to skip or zero
	os.WriteFile(src, data, 0o600)
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, u)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, u)
	out := filepath.Join(e.dir, "out.img")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", u, out)
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, data) {
		t.Fatal("qemu-img convert out of the export differs from what went in")
	}
	// compare notices a planted difference.
	data[12345] ^= 1
	os.WriteFile(src, data, 0o600)
	if err := exec.Command("qemu-img", "compare", "-q", "-f", "raw", "-F", "raw", src, u).Run(); err == nil {
		t.Fatal("qemu-img compare missed a planted difference")
	}
}

func TestNbdinfo(t *testing.T) {
	need(t, "nbdinfo")
	e := newEnv(t, 48<<20)
	e.start(t)
	var info struct {
		Protocol string `json:"protocol"`
		Exports  []struct {
			Name      string `json:"export-name"`
			Size      int64  `json:"export-size"`
			ReadOnly  bool   `json:"is_read_only"`
			Flush     bool   `json:"can_flush"`
			FUA       bool   `json:"can_fua"`
			Trim      bool   `json:"can_trim"`
			Zero      bool   `json:"can_zero"`
			MultiConn bool   `json:"can_multi_conn"`
			MaxBlock  int64  `json:"block_size_maximum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(run(t, "nbdinfo", "--json", e.uri("vm1/disk0"))), &info); err != nil {
		t.Fatal(err)
	}
	x := info.Exports[0]
	if info.Protocol != "newstyle-fixed" || x.Name != "vm1/disk0" || x.Size != 48<<20 || x.ReadOnly ||
		!x.Flush || !x.FUA || !x.Trim || !x.Zero || !x.MultiConn || x.MaxBlock != 32<<20 {
		t.Fatalf("nbdinfo: %+v", info)
	}
	if out := run(t, "nbdinfo", "--list", "nbd+unix://?socket="+e.sock); !strings.Contains(out, "vm1/disk0") {
		t.Fatalf("nbdinfo --list:\n%s", out)
	}
	if err := exec.Command("nbdinfo", e.uri("vm1/nope")).Run(); err == nil {
		t.Fatal("nbdinfo opened an export that does not exist")
	}
}

func TestNbdcopy(t *testing.T) {
	need(t, "nbdcopy")
	e := newEnv(t, 16<<20)
	e.start(t)
	src := filepath.Join(e.dir, "src.img")
	data := randomFile(t, src, 16<<20)
	run(t, "nbdcopy", src, e.uri("vm1/disk0"))
	out := filepath.Join(e.dir, "out.img")
	run(t, "nbdcopy", e.uri("vm1/disk0"), out)
	if got, _ := os.ReadFile(out); !bytes.Equal(got, data) {
		t.Fatal("nbdcopy round trip differs")
	}
}

func TestNbdfuse(t *testing.T) {
	need(t, "nbdfuse")
	needRoot(t)
	e := newEnv(t, 8<<20)
	e.start(t)
	mnt := filepath.Join(e.dir, "nbdfuse")
	os.Mkdir(mnt, 0o755)
	// nbdfuse stays in the foreground; it writes its pid file once the
	// mount is ready.
	pidfile := filepath.Join(e.dir, "nbdfuse.pid")
	var out syncBuffer
	cmd := exec.Command("nbdfuse", "-P", pidfile, mnt, e.uri("vm1/disk0"))
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		exec.Command("fusermount3", "-u", mnt).Run()
		select {
		case <-done:
		case <-time.After(waitfor.Patience):
			cmd.Process.Kill()
		}
	}()
	for deadline := time.Now().Add(waitfor.Patience); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(pidfile); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("nbdfuse exited: %v\n%s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nbdfuse did not mount:\n%s", out.String())
		}
	}
	file := filepath.Join(mnt, "nbd")
	data := bytes.Repeat([]byte("vrep-nbdfuse-"), 100000)[:1<<20]
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	f.Sync()
	f.Close()
	qemuIO(t, e.uri("vm1/disk0"), "read -P 0x76 1M 1") // 'v'
	got := make([]byte, len(data))
	f, _ = os.Open(file)
	f.ReadAt(got, 1<<20)
	f.Close()
	if !bytes.Equal(got, data) {
		t.Fatal("nbdfuse read back differs")
	}
}

func TestFioVerify(t *testing.T) {
	need(t, "fio")
	e := newEnv(t, 64<<20)
	e.start(t)
	for _, job := range [][]string{
		{"--rw=randwrite", "--bs=4k", "--iodepth=32"},
		{"--rw=write", "--bs=1M", "--iodepth=8"},
	} {
		args := append([]string{"--name=verify", "--ioengine=nbd", "--uri=" + e.uri("vm1/disk0"), "--size=64M",
			"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse"}, job...)
		out := run(t, "fio", args...)
		if strings.Contains(out, "verify:") || strings.Contains(out, "bad magic") {
			t.Fatalf("fio %v:\n%s", job, out)
		}
	}
}

func TestKillNineKeepsFlushedWrites(t *testing.T) {
	need(t, "qemu-io")
	e := newEnv(t, 32<<20)
	for round := range 3 {
		d := e.start(t)
		u := e.uri("vm1/disk0")
		// Earlier rounds' flushed writes are still there.
		for r := range round {
			qemuIO(t, u, "read -P "+pattern(r)+" "+offset(r)+" 1M")
		}
		qemuIO(t, u, "write -P "+pattern(round)+" "+offset(round)+" 1M", "flush")
		d.kill()
	}
	d := e.start(t)
	for r := range 3 {
		qemuIO(t, e.uri("vm1/disk0"), "read -P "+pattern(r)+" "+offset(r)+" 1M")
	}
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
}

func pattern(r int) string { return []string{"0x11", "0x22", "0x33"}[r] }
func offset(r int) string  { return []string{"0", "5M", "17M"}[r] }

func TestTCPExport(t *testing.T) {
	need(t, "qemu-io")
	l, err := net.Listen("tcp", "127.0.0.1:0") // find a free port
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	e := newEnv(t, 8<<20)
	e.start(t, "--nbd", "tcp:"+addr)
	qemuIO(t, "nbd://"+addr+"/vm1/disk0", "write -P 0x5a 0 64k", "read -P 0x5a 0 64k")
}

// vrepRun runs the vrep binary and returns its exit code and output.
func vrepRun(t *testing.T, args ...string) (int, string) {
	t.Helper()
	return run2(t, vrepBin, args...)
}

func TestStartErrors(t *testing.T) {
	e := newEnv(t, 8<<20)
	cases := []struct {
		name string
		args []string
		code int
		msg  string
	}{
		{"missing image", []string{"--disk", "vm1/disk0=" + filepath.Join(e.dir, "nope.img")}, exitError, "no such file"},
		{"bad disk name", []string{"--disk", "../etc=" + e.img}, exitUsage, "must not start"},
		{"no vm part", []string{"--disk", "disk0=" + e.img}, exitUsage, "VM/DISK"},
		{"bad nbd address", []string{"--disk", "vm1/d=" + e.img, "--nbd", "http://x"}, exitUsage, "unix:PATH"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := append([]string{"primary", "--state", filepath.Join(e.dir, "st-"+c.name)}, c.args...)
			if !strings.Contains(strings.Join(args, " "), "--nbd") {
				args = append(args, "--nbd", "unix:"+filepath.Join(e.dir, "x.sock"))
			}
			code, out := vrepRun(t, args...)
			if code != c.code || !strings.Contains(out, c.msg) || strings.Count(strings.TrimSpace(out), "\n") > 3 {
				t.Fatalf("exit %d (want %d), output:\n%s", code, c.code, out)
			}
		})
	}
	t.Run("locks", func(t *testing.T) {
		e.start(t)
		// Same state directory.
		code, out := vrepRun(t, "primary", "--state", e.state, "--disk", "vm1/disk0="+e.img, "--nbd", "unix:"+filepath.Join(e.dir, "other.sock"))
		if code != exitConflict || !strings.Contains(out, "in use") {
			t.Fatalf("second primary on the same state: exit %d\n%s", code, out)
		}
		// Same image, other state.
		code, out = vrepRun(t, "primary", "--state", filepath.Join(e.dir, "state2"), "--disk", "vm2/disk0="+e.img, "--nbd", "unix:"+filepath.Join(e.dir, "other.sock"))
		if code != exitConflict || !strings.Contains(out, "in use") {
			t.Fatalf("second primary on the same image: exit %d\n%s", code, out)
		}
		// Same socket, other state and image.
		other := filepath.Join(e.dir, "other.img")
		os.WriteFile(other, make([]byte, 1<<20), 0o600)
		code, out = vrepRun(t, "primary", "--state", filepath.Join(e.dir, "state3"), "--disk", "vm2/disk0="+other, "--nbd", "unix:"+e.sock)
		if code != exitConflict {
			t.Fatalf("second primary on a live socket: exit %d\n%s", code, out)
		}
	})
}

func TestCorruptLogIsRefused(t *testing.T) {
	need(t, "qemu-io")
	e := newEnv(t, 8<<20)
	d := e.start(t, "--merge-after", "1G")
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x77 0 64k", "flush", "write -P 0x78 1M 64k", "flush")
	d.kill() // nothing merged: the writes live only in the log
	logDir := filepath.Join(e.state, "disks", "vm1", "disk0", "log")
	segs, _ := filepath.Glob(filepath.Join(logDir, "*.hrl"))
	b, _ := os.ReadFile(segs[0])
	b[32+32+100] ^= 0xff // inside the first record's payload: synced data
	os.WriteFile(segs[0], b, 0o600)
	before, _ := os.ReadFile(e.img)
	code, out := vrepRun(t, "log-check", filepath.Join(e.state, "disks", "vm1", "disk0"))
	if code != exitCorrupt || !strings.Contains(out, "corrupt") {
		t.Fatalf("log-check: exit %d\n%s", code, out)
	}
	code, out = vrepRun(t, "primary", "--state", e.state, "--disk", "vm1/disk0="+e.img, "--nbd", "unix:"+e.sock)
	if code != exitCorrupt || !strings.Contains(out, "needs a resync") {
		t.Fatalf("primary on a corrupt log: exit %d\n%s", code, out)
	}
	if after, _ := os.ReadFile(e.img); !bytes.Equal(before, after) {
		t.Fatal("the image changed although the log is corrupt")
	}
}

func TestCertCommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if code, out := vrepRun(t, "cert", "init", "--dir", dir); code != 0 || !strings.Contains(out, "CA made") {
		t.Fatalf("cert init: exit %d\n%s", code, out)
	}
	if code, out := vrepRun(t, "cert", "init", "--dir", dir); code != exitConflict || !strings.Contains(out, "already exists") {
		t.Fatalf("second cert init: exit %d\n%s", code, out)
	}
	if code, out := vrepRun(t, "cert", "issue", "--dir", dir, "--name", "primary1"); code != 0 {
		t.Fatalf("cert issue: exit %d\n%s", code, out)
	}
	if code, out := vrepRun(t, "cert", "issue", "--dir", dir, "--name", "../evil"); code != exitUsage {
		t.Fatalf("cert issue with a bad name: exit %d\n%s", code, out)
	}
	out := run(t, "openssl", "x509", "-in", filepath.Join(dir, "primary1.crt"), "-noout", "-text")
	if !strings.Contains(out, "DNS:primary1") || !strings.Contains(out, "prime256v1") {
		t.Fatalf("certificate:\n%s", out)
	}
	run(t, "openssl", "verify", "-CAfile", filepath.Join(dir, "ca.crt"), filepath.Join(dir, "primary1.crt"))
}
