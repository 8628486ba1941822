package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/names"
	"github.com/vrep-io/vrep/internal/pki"
	"github.com/vrep-io/vrep/replica"
)

func replicaCmd() *cobra.Command {
	var (
		data, listen, tlsDir, name string
		allow                      []string
		allowAny                   bool
	)
	cmd := &cobra.Command{
		Use:   "replica --data DIR --listen ADDR --tls-dir DIR --name NAME (--allow PRIMARY[=ROOT]... | --allow-any)",
		Short: "Keep replicas of primaries' disks: receive initial copies and changes over mutual TLS",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if data == "" || listen == "" || tlsDir == "" || name == "" {
				return fmt.Errorf("%w: --data, --listen, --tls-dir and --name are required", errUsage)
			}
			if len(allow) == 0 && !allowAny {
				return fmt.Errorf("%w: give --allow PRIMARY[=ROOT] for each primary, or --allow-any", errUsage)
			}
			roots := map[string]string{}
			for _, a := range allow {
				p, root, _ := strings.Cut(a, "=")
				if err := names.Part(p); err != nil {
					return err
				}
				if root != "" {
					if err := names.Part(root); err != nil {
						return err
					}
				}
				roots[p] = root
			}
			tc, err := pki.ServerConfig(tlsDir, name)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(data, 0o700); err != nil {
				return err
			}
			log := slog.New(slog.NewTextHandler(os.Stderr, nil))
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv := replica.NewServer(replica.ServerConfig{Data: data, TLS: tc, Allow: roots, AllowAny: allowAny, Log: log})
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			errc := make(chan error, 1)
			go func() { errc <- srv.Serve(l) }()
			log.Info("replica serving", "listen", l.Addr().String(), "data", data)
			select {
			case <-ctx.Done():
			case err = <-errc:
			}
			srv.Close()
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&data, "data", "", "storage directory (a root per primary under it)")
	f.StringVar(&listen, "listen", "", "address to listen on, host:port")
	f.StringVar(&tlsDir, "tls-dir", "", "directory with ca.crt and this host's NAME.crt/NAME.key")
	f.StringVar(&name, "name", "", "this replica's certificate name")
	f.StringArrayVar(&allow, "allow", nil, "authorize a primary by certificate name, with its own root (default its name)")
	f.BoolVar(&allowAny, "allow-any", false, "authorize any primary the CA vouches for, rooted at its name")
	return cmd
}
