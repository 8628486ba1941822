package primary

import (
	"context"
	"time"

	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/replica"
)

// ReplicaConfig says where and how the disks are replicated.
type ReplicaConfig struct {
	Addr        string // host:port
	TLSDir      string // ca.crt, NAME.crt, NAME.key
	Name        string // this primary's certificate name
	ReplicaName string // the name the replica's certificate must carry
	Codec       replica.Codec
	Backoff     []time.Duration // nil: Hyper-V's schedule
	// Interval is the copy frequency: 0 is continuous (every durable
	// record, as soon as it is durable); otherwise a crash-consistent
	// point is taken every Interval (unless Points.Every says otherwise)
	// and each disk ships up to its newest point, with overwritten
	// records coalesced away, while new writes go to the next segment.
	Interval time.Duration
	// Timeout is how long a connection to the replica may stand still
	// mid-exchange before it is given up and retried (default one minute).
	Timeout time.Duration
}

// DefaultContinuousPoints is how often a replicating primary takes a
// crash-consistent point in continuous mode when nothing else is set.
const DefaultContinuousPoints = 5 * time.Second

func (d *Daemon) startShipping() error {
	rc := d.cfg.Replica
	if rc == nil {
		return nil
	}
	tc, err := pki.ClientConfig(rc.TLSDir, rc.Name, rc.ReplicaName)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.stopShip = cancel
	d.shippers = map[string]*replica.Shipper{}
	for _, disk := range d.Disks {
		sc := replica.ShipperConfig{Addr: rc.Addr, TLS: tc, Codec: rc.Codec, Backoff: rc.Backoff, Timeout: rc.Timeout, Log: d.log}
		if rc.Interval > 0 {
			sc.Through, sc.Coalesce = disk.shipThrough.Load, true
		}
		sh := replica.NewShipper(disk.Name, disk.Volume, sc)
		d.shippers[disk.Name] = sh
		d.shipWG.Add(1)
		go func() {
			defer d.shipWG.Done()
			sh.Run(ctx)
		}()
	}
	return nil
}
