// Command nbdbare serves a raw image through vrep's NBD server with no
// change tracking: the yardstick that separates the cost of the server
// loop from the cost of tracking in bench/nbd.sh (BARE=1).
//
//	nbdbare IMAGE SOCKET
package main

import (
	"fmt"
	"net"
	"os"

	"github.com/vrep-io/vrep/blockdev"
	"github.com/vrep-io/vrep/nbd"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: nbdbare IMAGE SOCKET")
		os.Exit(2)
	}
	d, err := blockdev.OpenFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := nbd.NewServer(nil)
	s.Add(nbd.Export{Name: "vm1/disk0", Device: d})
	os.Remove(os.Args[2])
	l, err := net.Listen("unix", os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := s.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
