package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/hrl"
	"github.com/vrep-io/vrep/internal/vfs"
)

func logCheckCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "log-check STATE/disks/VM/DISK",
		Short: "Verify a disk's change log without changing it",
		Long: `Reads every record of a disk's change log and checks its framing, checksums and
sequence. A torn tail (an unsynced end cut by a crash) is reported, not cut.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := filepath.Join(args[0], "log")
			var records, writes, markers int
			var bytes int64
			err := hrl.Check(vfs.OS{}, dir, func(r hrl.Record) {
				records++
				switch r.Type {
				case hrl.TypeWrite:
					writes++
					bytes += int64(len(r.Payload))
				case hrl.TypeMarker:
					markers++
				}
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: %d records (%d writes, %d bytes; %d points): ok\n", dir, records, writes, bytes, markers)
			return nil
		},
	}
}
