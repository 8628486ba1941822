// Command fusebare serves a raw image as DIR/vm1/disk0.img through vrep's
// FUSE file system with no change tracking, until SIGTERM: the yardstick
// that separates the cost of FUSE from the cost of tracking in
// bench/fuse.sh (BARE=1).
//
//	fusebare IMAGE DIR
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/fuse"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: fusebare IMAGE DIR")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(image, dir string) error {
	d, err := blockdev.OpenFile(image)
	if err != nil {
		return err
	}
	defer d.Close()
	m, err := fuse.New(dir, nil)
	if err != nil {
		return err
	}
	if err := m.Add("vm1/disk0", d); err != nil {
		m.Unmount()
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return m.Unmount()
}
