package demo

import (
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vrep-io/vrep/internal/nbdclient"
)

// BenchmarkReplicationLag measures continuous replication's lag on
// loopback: a writer issues 4 KiB random writes over NBD at half the rate
// it reaches unthrottled, for 5 s; each write's lag is the time from its
// acknowledgement to the replica acknowledging its LSN (sampled every
// millisecond). Reports p50 and p99 in ms (goal p99 <= 1000).
func BenchmarkReplicationLag(b *testing.B) {
	const size = 256 << 20
	for range b.N {
		p, err := StartPair(b.TempDir(), []string{"vm1/disk0"}, size, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			b.Fatal(err)
		}
		cl, err := nbdclient.Dial("unix", p.PrimaryNBD, "vm1/disk0")
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 4096)
		r := rand.New(rand.NewPCG(1, 1))
		write := func() {
			if _, err := cl.WriteAt(buf, r.Int64N(size/4096)*4096); err != nil {
				b.Fatal(err)
			}
		}
		// The unthrottled rate, then half of it.
		start, n := time.Now(), 0
		for time.Since(start) < time.Second {
			write()
			n++
		}
		rate := float64(n) / time.Since(start).Seconds() / 2
		if err := waitReplicated(b.Context(), p.Primary, time.Minute); err != nil {
			b.Fatal(err)
		}
		// acked[i] is the replica's acknowledged LSN at sample time ts[i].
		var mu sync.Mutex
		var ts []time.Time
		var acked []uint64
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond):
				}
				d := p.Primary.Status().Disks[0]
				mu.Lock()
				ts = append(ts, time.Now())
				acked = append(acked, d.Replication.Acked)
				mu.Unlock()
			}
		}()
		type w struct {
			at  time.Time
			lsn uint64
		}
		var writes []w
		vol := p.Primary.Disks[0].Volume
		interval := time.Duration(float64(time.Second) / rate)
		begin := time.Now()
		for i := 0; time.Since(begin) < 5*time.Second; i++ {
			if d := time.Until(begin.Add(time.Duration(i) * interval)); d > 0 {
				time.Sleep(d)
			}
			write()
			writes = append(writes, w{time.Now(), vol.Log().LastLSN()})
		}
		if err := waitReplicated(b.Context(), p.Primary, time.Minute); err != nil {
			b.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		close(stop)
		<-done
		var lags []float64
		j := 0
		for _, wr := range writes {
			for j < len(ts) && (ts[j].Before(wr.at) || acked[j] < wr.lsn) {
				j++
			}
			if j == len(ts) {
				b.Fatalf("write at LSN %d never acknowledged in the samples", wr.lsn)
			}
			lags = append(lags, float64(ts[j].Sub(wr.at).Microseconds())/1000)
		}
		slices.Sort(lags)
		b.ReportMetric(rate, "writes/s")
		b.ReportMetric(lags[len(lags)/2], "p50-ms")
		b.ReportMetric(lags[len(lags)*99/100], "p99-ms")
		b.ReportMetric(lags[len(lags)-1], "max-ms")
		cl.Close()
		p.Close()
	}
}
