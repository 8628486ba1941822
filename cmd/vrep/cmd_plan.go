package main

import (
	"bytes"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vrep-io/vrep/internal/plan"
)

func planCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Recovery plans: fail many VMs over in order, with scripts and manual steps",
		Long: `A recovery plan (a YAML file) fails VMs over group after group, running
scripts before and after each group and pausing at manual steps until
vrep plan continue. It runs inside the replica daemon: a restart resumes it
where it was, never running a finished step again.`,
	}
	cmd.AddCommand(planRunCmd(), planStatusCmd(), planContinueCmd(), planCancelCmd(), planCleanupCmd())
	return cmd
}

func planRunCmd() *cobra.Command {
	var a apiFlags
	var test, planned, unplanned bool
	var point string
	cmd := &cobra.Command{
		Use:   "run PLAN.yaml --test|--planned|--unplanned [--point latest|latest-app] [--data DIR | --api SOCKET]",
		Short: "Check a recovery plan and start it",
		Long: `Checks the plan against the replica (unknown VMs or groups, a VM listed twice,
a VM not replicated here or not in a state for this failover, a missing
script) and, if all is well, starts it in the daemon and returns; follow it
with vrep plan status PLAN. Every problem found is listed at once, with
exit code 2, and then nothing is started.

--test starts test failovers (replication goes on; vrep plan cleanup PLAN
stops them); --unplanned fails over to the newest point (--point latest-app:
the newest app-consistent one); --planned runs planned failovers. Relative
script paths are taken from the plan file's directory.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var modes []plan.Mode
			for m, on := range map[plan.Mode]bool{plan.Test: test, plan.Planned: planned, plan.Unplanned: unplanned} {
				if on {
					modes = append(modes, m)
				}
			}
			if len(modes) != 1 {
				return fmt.Errorf("%w: say how the plan fails over: one of --test, --planned or --unplanned", errUsage)
			}
			if point != "" && point != "latest" && point != "latest-app" {
				return fmt.Errorf("%w: --point is latest or latest-app for a plan, not %q", errUsage, point)
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			abs, err := filepath.Abs(args[0])
			if err != nil {
				return err
			}
			q := url.Values{"mode": {string(modes[0])}, "base": {filepath.Dir(abs)}}
			if point != "" {
				q.Set("point", point)
			}
			var r plan.Run
			if err := a.callBody("POST", "/v1/plan/run?"+q.Encode(), bytes.NewReader(b), &r); err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "plan %s started: a %s run of %d steps; follow it with vrep plan status %s\n",
				r.Plan.Name, r.Mode, len(r.Steps), r.Plan.Name)
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("replica", "recovery plans run in the replica daemon")
	cmd.Flags().BoolVar(&test, "test", false, "test failovers, while replication goes on")
	cmd.Flags().BoolVar(&planned, "planned", false, "planned failovers: nothing lost")
	cmd.Flags().BoolVar(&unplanned, "unplanned", false, "failovers to a point on the replica")
	cmd.Flags().StringVar(&point, "point", "", "latest (default) or latest-app")
	return cmd
}

func planStatusCmd() *cobra.Command {
	var a apiFlags
	cmd := &cobra.Command{
		Use:   "status [PLAN] [--json] [--data DIR | --api SOCKET]",
		Short: "Show the recovery plans, or one plan's steps and log",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if len(args) == 0 {
				var runs []plan.Run
				if err := a.call("GET", "/v1/plans", &runs); err != nil {
					return err
				}
				if a.json {
					return printJSON(out, runs)
				}
				if len(runs) == 0 {
					fmt.Fprintln(out, "no recovery plan has run here")
					return nil
				}
				tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "PLAN\tMODE\tSTATE\tSTEP\tSTARTED")
				for _, r := range runs {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\n", r.Plan.Name, r.Mode, r.State, min(r.Step+1, len(r.Steps)), len(r.Steps), r.Started.Local().Format(time.DateTime))
				}
				return tw.Flush()
			}
			var r plan.Run
			if err := a.call("GET", "/v1/plan?name="+url.QueryEscape(args[0]), &r); err != nil {
				return err
			}
			if a.json {
				return printJSON(out, r)
			}
			printRun(out, r)
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("replica", "recovery plans run in the replica daemon")
	return cmd
}

// printRun prints a run: its state, its steps with their times and
// results, and its log.
func printRun(out io.Writer, r plan.Run) {
	fmt.Fprintf(out, "plan %s: %s (a %s run, started %s)\n", r.Plan.Name, r.State, r.Mode, r.Started.Local().Format(time.DateTime))
	if r.Reason != "" {
		fmt.Fprintf(out, "  %s\n", r.Reason)
	}
	if len(r.Tests) > 0 {
		fmt.Fprintf(out, "  test failovers running: %s\n", strings.Join(r.Tests, ", "))
	}
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tGROUP\tWHAT\tSTATE\tSTARTED\tTOOK\tRESULT")
	for i, s := range r.Steps {
		started, took := "", ""
		if !s.Started.IsZero() {
			started = s.Started.Local().Format(time.TimeOnly)
			if !s.Ended.IsZero() {
				took = s.Ended.Sub(s.Started).Round(time.Millisecond).String()
			}
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", i+1, s.Group, s.What(), s.State, started, took, s.Result)
	}
	tw.Flush()
	fmt.Fprintln(out, "log:")
	for _, e := range r.Log {
		fmt.Fprintf(out, "  %s  %s\n", e.Time.Local().Format("15:04:05.000"), e.Msg)
	}
}

func planContinueCmd() *cobra.Command {
	var a apiFlags
	var retry, skip bool
	cmd := &cobra.Command{
		Use:   "continue PLAN [--retry | --skip] [--data DIR | --api SOCKET]",
		Short: "Go on past a manual step, or past a step that failed or was interrupted",
		Long: `Goes on with a plan that waits at a manual step. A plan stopped at a step
that failed, or that was under way when the daemon stopped, goes on only
when told how: --retry runs the step again, --skip goes on without it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := "/v1/plan/continue?name=" + url.QueryEscape(args[0])
			switch {
			case retry && skip:
				return fmt.Errorf("%w: --retry or --skip, not both", errUsage)
			case retry:
				q += "&how=retry"
			case skip:
				q += "&how=skip"
			}
			var r plan.Run
			if err := a.call("POST", q, &r); err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "plan %s goes on\n", r.Plan.Name)
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("replica", "recovery plans run in the replica daemon")
	cmd.Flags().BoolVar(&retry, "retry", false, "run the step that failed or was interrupted again")
	cmd.Flags().BoolVar(&skip, "skip", false, "go on without the step that failed or was interrupted")
	return cmd
}

func planCancelCmd() *cobra.Command {
	var a apiFlags
	cmd := &cobra.Command{
		Use:   "cancel PLAN [--data DIR | --api SOCKET]",
		Short: "End a plan at its step (a script under way is killed)",
		Long: `Ends a plan at the step it is at; a script under way is killed. What the
plan failed over stays failed over (vrep failover cancel undoes a VM's); a
test run's test failovers run until vrep plan cleanup PLAN.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var r plan.Run
			if err := a.call("POST", "/v1/plan/cancel?name="+url.QueryEscape(args[0]), &r); err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "plan %s: %s\n", r.Plan.Name, r.Reason)
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("replica", "recovery plans run in the replica daemon")
	return cmd
}

func planCleanupCmd() *cobra.Command {
	var a apiFlags
	var force bool
	cmd := &cobra.Command{
		Use:   "cleanup PLAN [--force] [--data DIR | --api SOCKET]",
		Short: "Stop the test failovers of a test run",
		Long: `Stops every test failover a test run of the plan started, discarding what
was written to them. While a client holds a test disk it refuses with exit
code 4 and names it; --force stops them anyway (their clients get I/O
errors).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q := "/v1/plan/cleanup?name=" + url.QueryEscape(args[0])
			if force {
				q += "&force=1"
			}
			var r plan.Run
			if err := a.call("POST", q, &r); err != nil {
				return err
			}
			if a.json {
				return printJSON(cmd.OutOrStdout(), r)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "plan %s cleaned up: no test failover of it is left\n", r.Plan.Name)
			return nil
		},
	}
	a.register(cmd.Flags())
	a.needs("replica", "recovery plans run in the replica daemon")
	cmd.Flags().BoolVar(&force, "force", false, "stop even while a client holds a test disk")
	return cmd
}
