package primary

import "github.com/vrep-io/vrep/fuse"

func (d *Daemon) mountFUSE() error {
	m, err := fuse.New(d.cfg.FUSE, d.log)
	if err != nil {
		return err
	}
	d.fuse = m
	for _, disk := range d.Disks {
		if err := m.Add(disk.Name, disk.Volume); err != nil {
			return err
		}
	}
	return nil
}
