package main

import (
	"fmt"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/pki"
)

func certCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Make the CA and host certificates that primaries and replicas authenticate with",
	}
	var dir, name string
	var days int
	initCmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Make a certificate authority (ca.crt, ca.key) in DIR",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return fmt.Errorf("%w: --dir is required", errUsage)
			}
			if err := pki.InitCA(dir); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA made: %s (keep ca.key private)\n", filepath.Join(dir, "ca.crt"))
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "directory for the CA")
	issue := &cobra.Command{
		Use:   "issue --dir DIR --name NAME",
		Short: "Issue a host certificate and key for NAME (ECDSA P-256, NAME in the SAN)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" || name == "" {
				return fmt.Errorf("%w: --dir and --name are required", errUsage)
			}
			if err := pki.Issue(dir, name, time.Duration(days)*24*time.Hour); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "certificate for %s: %s, key %s\n", name,
				filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
			return nil
		},
	}
	issue.Flags().StringVar(&dir, "dir", "", "the CA's directory")
	issue.Flags().StringVar(&name, "name", "", "host name: the primary's or replica's name")
	issue.Flags().IntVar(&days, "days", int(pki.HostValidity/(24*time.Hour)), "validity in days")
	cmd.AddCommand(initCmd, issue)
	return cmd
}
