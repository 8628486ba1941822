package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// Systemd speaks the sd_notify protocol for a daemon run as a Type=notify
// unit: READY=1 once it serves, WATCHDOG=1 every half WatchdogSec while
// its loops answer, STOPPING=1 when it stops. Without NOTIFY_SOCKET (not
// under systemd) it does nothing. Stop ends what it started.
type Systemd struct {
	log  *slog.Logger
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

// NotifyReady tells systemd the daemon is ready (call it once every
// listener and the API serve), and, when the unit has a watchdog, starts
// feeding it at half its interval for as long as alive returns nil. A
// daemon whose alive fails is not fed, and systemd restarts it.
func NotifyReady(log *slog.Logger, alive func() error) *Systemd {
	s := &Systemd{log: log, stop: make(chan struct{})}
	if ok, err := sd.SdNotify(false, sd.SdNotifyReady); err != nil {
		log.Warn("systemd: READY=1 not sent", "err", err)
	} else if !ok {
		return s // not under systemd
	}
	every, err := sd.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd: bad watchdog settings; not feeding it", "err", err)
	}
	if every <= 0 {
		return s
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(every / 2)
		defer t.Stop()
		for {
			if err := alive(); err != nil {
				log.Error("systemd: the daemon does not answer; not feeding the watchdog", "err", err)
			} else if _, err := sd.SdNotify(false, sd.SdNotifyWatchdog); err != nil {
				log.Warn("systemd: WATCHDOG=1 not sent", "err", err)
			}
			select {
			case <-s.stop:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Stop tells systemd the daemon is stopping and stops feeding the
// watchdog. It is idempotent.
func (s *Systemd) Stop() {
	s.once.Do(func() {
		close(s.stop)
		s.wg.Wait()
		sd.SdNotify(false, sd.SdNotifyStopping)
	})
}

// ProbeAPI returns a liveness check that asks the API on the unix socket
// at path for path /v1/status: it answers only while the HTTP server runs
// and the daemon's state can be read under its locks, so a daemon stuck in
// a lock or with a dead API stops feeding the watchdog.
func ProbeAPI(path string, timeout time.Duration) func() error {
	path = strings.TrimPrefix(path, "unix:")
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}, DisableKeepAlives: true},
	}
	return func() error {
		resp, err := client.Get("http://vrep/v1/status")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status answered %s", resp.Status)
		}
		return nil
	}
}
