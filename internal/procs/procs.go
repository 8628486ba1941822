// Package procs sizes the Go scheduler for a server that blocks in disk
// system calls, and tells CPU-bound pools how many CPUs there are.
//
// A goroutine blocked in a system call (a pread of an image page that is
// not cached, an fdatasync) keeps its P until the runtime's monitor
// thread hands it off, at least 20 µs later and up to 10 ms when the
// monitor has backed off (golang/go#18236). With GOMAXPROCS at the CPU
// count, two reads waiting on a 2-CPU host's disk leave no P to read the
// next request, so the disk sees a queue depth of two whatever the guest
// asks for. Measured on this project's 2-core host (bench/nbd.sh, 4k
// 70/30 QD16 on an allocated image, pages dropped): vrep's untracked NBD
// server went from 0.71× nbdkit to 0.95–1.1× with 4 to 16 Ps, and vrep
// from 0.67–0.77× to 0.94–1.00× with 8. The cost is CPU: idle Ps send
// threads spinning for work, and 4k writes that never leave the page
// cache (CPU-bound on 2 cores) went from 0.86–0.96× to 0.75–0.82×.
// Guests' disks are mostly larger than the host's memory, so reads that
// wait on the disk are the common case.
package procs

import (
	"os"
	"runtime"
)

// cpus is GOMAXPROCS as the runtime set it, before ForBlockingIO.
var cpus = runtime.GOMAXPROCS(0)

// CPUs is how many goroutines a CPU-bound pool should run: the CPUs this
// process may use (GOMAXPROCS as the runtime first set it, which follows
// the CPU affinity and cgroup limits).
func CPUs() int { return cpus }

// MinForIO is the fewest Ps a server doing blocking disk I/O gets.
const MinForIO = 8

// ForBlockingIO raises GOMAXPROCS to at least MinForIO, unless the
// GOMAXPROCS environment variable sets it. The extra Ps cost nothing
// while idle; they let goroutines run while others wait in the kernel.
// It returns the value set.
func ForBlockingIO() int {
	if os.Getenv("GOMAXPROCS") != "" {
		return runtime.GOMAXPROCS(0)
	}
	n := max(MinForIO, cpus)
	runtime.GOMAXPROCS(n)
	return n
}
