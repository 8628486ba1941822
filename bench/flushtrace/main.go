// Command flushtrace writes 4 KiB at random offsets over NBD, one at a
// time, each followed by a flush (fio's --iodepth=1 --fsync=1), and
// reports when the flushes were slow: fio gives a run's percentiles, not
// their place in time, and a fresh server's first second (a new log's
// first segment, its first spare) is not like the rest.
//
//	flushtrace [-secs 5] [-window 300ms] [-each] SOCKET [EXPORT]
//
// It prints the flushes done, their 50th and 99th percentile latency,
// the flushes done within the first window, and with -each one line per
// flush: its start and its latency, µs.
package main

import (
	"crypto/rand"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"slices"
	"time"

	"github.com/vrep-io/vrep/internal/nbdclient"
)

func main() {
	secs := flag.Float64("secs", 5, "seconds to run")
	window := flag.Duration("window", 300*time.Millisecond, "count the flushes done within this much of the start")
	each := flag.Bool("each", false, "print every flush: start and latency, µs")
	flag.Parse()
	if *secs <= 0 || *window < 0 {
		fmt.Fprintln(os.Stderr, "flushtrace: -secs must be positive and -window not negative")
		os.Exit(2)
	}
	if flag.NArg() < 1 || flag.NArg() > 2 {
		fmt.Fprintln(os.Stderr, "usage: flushtrace [-secs S] [-window D] [-each] SOCKET [EXPORT]")
		os.Exit(2)
	}
	cl, err := nbdclient.Dial("unix", flag.Arg(0), flag.Arg(1))
	if err != nil {
		fmt.Fprintln(os.Stderr, "flushtrace:", err)
		os.Exit(1)
	}
	defer cl.Close()
	buf := make([]byte, 4096)
	rand.Read(buf)
	blocks := cl.Size() / int64(len(buf))
	var lat []time.Duration
	var early int
	t0 := time.Now()
	run := time.Duration(*secs * float64(time.Second))
	for time.Since(t0) < run {
		if _, err := cl.WriteAt(buf, mrand.Int64N(blocks)*int64(len(buf))); err != nil {
			fmt.Fprintln(os.Stderr, "flushtrace: write:", err)
			os.Exit(1)
		}
		start := time.Now()
		if err := cl.Sync(); err != nil {
			fmt.Fprintln(os.Stderr, "flushtrace: flush:", err)
			os.Exit(1)
		}
		d := time.Since(start)
		lat = append(lat, d)
		if start.Sub(t0) < *window {
			early++
		}
		if *each {
			fmt.Printf("%d %d\n", start.Sub(t0).Microseconds(), d.Microseconds())
		}
	}
	if len(lat) == 0 {
		fmt.Fprintln(os.Stderr, "flushtrace: no flush completed")
		os.Exit(1)
	}
	slices.Sort(lat)
	pct := func(q float64) int64 { return lat[int(q*float64(len(lat)-1))].Microseconds() }
	fmt.Fprintf(os.Stderr, "flushes %d p50 %d µs p99 %d µs; in the first %v: %d\n", len(lat), pct(0.5), pct(0.99), *window, early)
}
