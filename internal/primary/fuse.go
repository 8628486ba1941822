package primary

import "github.com/vrep-io/vrep/fuse"

func (d *Daemon) mountFUSE() error {
	m := d.cfg.SharedFUSE
	if m == nil {
		var err error
		if m, err = fuse.New(d.cfg.FUSE, d.log); err != nil {
			return err
		}
	}
	d.fuse = m
	for _, disk := range d.Disks {
		if err := m.Add(disk.Name, disk.Volume); err != nil {
			return err
		}
	}
	return nil
}
