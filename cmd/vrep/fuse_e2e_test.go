package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// loop attaches a file to a loop device (direct I/O, so the kernel's
// writes reach vrep in order) and returns the device.
func loop(t *testing.T, file string) string {
	t.Helper()
	dev := strings.TrimSpace(run(t, "losetup", "-f", "--show", "--direct-io=on", file))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func mountFS(t *testing.T, dev, dir string, opts ...string) {
	t.Helper()
	os.MkdirAll(dir, 0o755)
	run(t, "mount", append(append([]string{}, opts...), dev, dir)...)
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
}

// writeTree writes n files of random sizes and returns their SHA-256 sums.
func writeTree(t *testing.T, root string, n int, seed uint64) map[string][32]byte {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	sums := map[string][32]byte{}
	for i := range n {
		rel := filepath.Join(fmt.Sprintf("d%02d", i%7), fmt.Sprintf("f%03d.bin", i))
		os.MkdirAll(filepath.Join(root, filepath.Dir(rel)), 0o755)
		b := make([]byte, r.IntN(200<<10))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if err := os.WriteFile(filepath.Join(root, rel), b, 0o644); err != nil {
			t.Fatal(err)
		}
		sums[rel] = sha256.Sum256(b)
	}
	return sums
}

func checkTree(t *testing.T, root string, sums map[string][32]byte) {
	t.Helper()
	for rel, want := range sums {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(b) != want {
			t.Fatalf("%s: checksum differs", rel)
		}
	}
}

func TestFUSEExt4OnLoop(t *testing.T) {
	need(t, "mkfs.ext4", "losetup", "fsfreeze", "fsck.ext4")
	needRoot(t)
	e := newEnv(t, 256<<20)
	mnt := filepath.Join(e.dir, "fuse")
	d := e.start(t, "--fuse", mnt)
	file := filepath.Join(mnt, "vm1", "disk0.img")
	st, err := os.Stat(file)
	if err != nil || st.Size() != 256<<20 {
		t.Fatalf("disk file: %v, %v", st, err)
	}
	if err := os.Truncate(file, 1<<20); err == nil {
		t.Fatal("a disk file could be resized")
	}
	dev := loop(t, file)
	run(t, "mkfs.ext4", "-q", dev)
	fsdir := filepath.Join(e.dir, "ext4")
	mountFS(t, dev, fsdir)
	sums := writeTree(t, fsdir, 170, 1)
	run(t, "fsfreeze", "-f", fsdir)
	run(t, "fsfreeze", "-u", fsdir)
	run(t, "umount", fsdir)
	run(t, "fsck.ext4", "-n", "-f", dev)
	mountFS(t, dev, fsdir)
	checkTree(t, fsdir, sums)
	run(t, "umount", fsdir)
	exec.Command("losetup", "-d", dev).Run()

	// One disk, two doors: the FUSE file and the NBD export agree.
	if out := run(t, "qemu-img", "info", "-f", "raw", file); !strings.Contains(out, "256 MiB") {
		t.Fatalf("qemu-img info:\n%s", out)
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", file, e.uri("vm1/disk0"))
	if err := d.stop(); err != nil {
		t.Fatalf("SIGTERM: %v\n%s", err, d.stderr)
	}
	if _, err := os.Stat(file); err == nil {
		t.Fatal("the FUSE file is still there after SIGTERM: not unmounted")
	}
	// The image itself now holds the file system.
	dev = loop(t, e.img)
	run(t, "fsck.ext4", "-n", "-f", dev)
	mountFS(t, dev, fsdir, "-o", "ro")
	checkTree(t, fsdir, sums)
}

func TestFUSETwoDoors(t *testing.T) {
	need(t, "qemu-io")
	needRoot(t)
	e := newEnv(t, 16<<20)
	mnt := filepath.Join(e.dir, "fuse")
	e.start(t, "--fuse", mnt)
	f, err := os.OpenFile(filepath.Join(mnt, "vm1", "disk0.img"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// FUSE → NBD.
	f.WriteAt(bytes.Repeat([]byte{0x42}, 64<<10), 1<<20)
	qemuIO(t, e.uri("vm1/disk0"), "read -P 0x42 1M 64k")
	// NBD → FUSE.
	qemuIO(t, e.uri("vm1/disk0"), "write -P 0x43 2M 64k")
	got := make([]byte, 64<<10)
	f.ReadAt(got, 2<<20)
	if !bytes.Equal(got, bytes.Repeat([]byte{0x43}, 64<<10)) {
		t.Fatal("the FUSE file does not see a write made over NBD")
	}
	// Punching a hole is a trim, seen by both doors.
	if err := syscall.Fallocate(int(f.Fd()), 0x02|0x01, 1<<20, 64<<10); err != nil { // PUNCH_HOLE|KEEP_SIZE
		t.Fatal(err)
	}
	qemuIO(t, e.uri("vm1/disk0"), "read -P 0 1M 64k")
	// Writing past the end of a disk fails; it never grows.
	if _, err := f.WriteAt([]byte("x"), 16<<20); err == nil {
		t.Fatal("a write past the end of the disk succeeded")
	}
}

func TestFUSEFio(t *testing.T) {
	need(t, "fio")
	needRoot(t)
	e := newEnv(t, 64<<20)
	mnt := filepath.Join(e.dir, "fuse")
	e.start(t, "--fuse", mnt)
	file := filepath.Join(mnt, "vm1", "disk0.img")
	for _, job := range [][]string{
		{"--ioengine=psync", "--rw=randwrite", "--bs=4k", "--numjobs=1"},
		{"--ioengine=libaio", "--direct=1", "--rw=randwrite", "--bs=4k", "--iodepth=32"},
		{"--ioengine=libaio", "--direct=1", "--rw=write", "--bs=1M", "--iodepth=8"},
	} {
		args := append([]string{"--name=verify", "--filename=" + file, "--size=32M", "--verify=crc32c",
			"--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=terse"}, job...)
		run(t, "fio", args...)
	}
}

func TestFUSEKillNine(t *testing.T) {
	needRoot(t)
	e := newEnv(t, 16<<20)
	mnt := filepath.Join(e.dir, "fuse")
	d := e.start(t, "--fuse", mnt)
	file := filepath.Join(mnt, "vm1", "disk0.img")
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	synced := bytes.Repeat([]byte("fsynced!"), 128<<10/8)
	if _, err := f.WriteAt(synced, 3<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	d.kill()
	if _, err := os.Stat(file); err == nil {
		t.Fatal("expected the mount to be dead after kill -9")
	}
	d = e.start(t, "--fuse", mnt)
	if !strings.Contains(d.stderr.String(), "stale mount") {
		t.Fatalf("restart did not say it cleared the stale mount:\n%s", d.stderr)
	}
	got := make([]byte, len(synced))
	f, err = os.Open(file)
	if err != nil {
		t.Fatalf("the mount point is not usable after a restart: %v", err)
	}
	defer f.Close()
	f.ReadAt(got, 3<<20)
	if !bytes.Equal(got, synced) {
		t.Fatal("fsynced bytes lost by kill -9")
	}
}
