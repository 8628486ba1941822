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
	var asJSON bool
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
			if asJSON {
				return printJSON(cmd.OutOrStdout(), CertFiles{Cert: filepath.Join(dir, "ca.crt"), Key: filepath.Join(dir, "ca.key")})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "CA made: %s (keep ca.key private)\n", filepath.Join(dir, "ca.crt"))
			return nil
		},
	}
	initCmd.Flags().StringVar(&dir, "dir", "", "directory for the CA")
	initCmd.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
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
			if asJSON {
				return printJSON(cmd.OutOrStdout(), CertFiles{Name: name, Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"),
					NotAfter: time.Now().Add(time.Duration(days) * 24 * time.Hour).UTC().Truncate(time.Second)})
			}
			fmt.Fprintf(cmd.OutOrStdout(), "certificate for %s: %s, key %s\n", name,
				filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"))
			return nil
		},
	}
	issue.Flags().StringVar(&dir, "dir", "", "the CA's directory")
	issue.Flags().StringVar(&name, "name", "", "host name: the primary's or replica's name")
	issue.Flags().BoolVar(&asJSON, "json", false, "print JSON, for scripts")
	issue.Flags().IntVar(&days, "days", int(pki.HostValidity/(24*time.Hour)), "validity in days")
	cmd.AddCommand(initCmd, issue)
	return cmd
}

// CertFiles is what vrep cert init and issue --json print: the files
// made, and for a host certificate its name and (about) its expiry.
type CertFiles struct {
	Name     string    `json:"name,omitempty"`
	Cert     string    `json:"cert"`
	Key      string    `json:"key"`
	NotAfter time.Time `json:"not_after,omitzero"`
}
