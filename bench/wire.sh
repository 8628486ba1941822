#!/usr/bin/env bash
# bench/wire.sh — wire bytes per written byte on a realistic workload, per
# codec: an ext4 on vrep's FUSE file (loop device) receives a source tree
# and binaries (this repository, /usr/share/doc, /usr/bin) while the disk
# replicates to a replica on loopback; the primary's status reports the
# frame bytes sent and the record bytes acknowledged. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
vrep=${VREP:-bin/vrep}
[ -x "$vrep" ] || go build -o "$vrep" ./cmd/vrep
work=$(realpath -m "${WORK:-bench/work}")/wire
rm -rf "$work"; mkdir -p "$work"
"$vrep" cert init --dir "$work/pki" >/dev/null
"$vrep" cert issue --dir "$work/pki" --name replica1 >/dev/null
"$vrep" cert issue --dir "$work/pki" --name primary1 >/dev/null
printf '| codec | record bytes | wire bytes | wire/written |\n|---|---|---|---|\n'
port=10990
for codec in zstd s2 none; do
	port=$((port + 1))
	rm -rf "$work/replica" "$work/state" && truncate -s 0 "$work/disk.img" && truncate -s 1G "$work/disk.img"
	"$vrep" replica --data "$work/replica" --listen 127.0.0.1:$port --tls-dir "$work/pki" --name replica1 --allow primary1 2>/dev/null &
	rpid=$!
	"$vrep" primary --state "$work/state" --disk vm1/disk0="$work/disk.img" --fuse "$work/mnt" \
		--replica 127.0.0.1:$port --retry-schedule 100ms --tls-dir "$work/pki" --name primary1 --replica-name replica1 --compression $codec 2>/dev/null &
	ppid=$!
	for _ in $(seq 200); do [ -f "$work/mnt/vm1/disk0.img" ] && break; sleep 0.05; done
	sleep 0.5
	dev=$(losetup -f --show --direct-io=on "$work/mnt/vm1/disk0.img")
	mkfs.ext4 -q "$dev" && mkdir -p "$work/fs" && mount "$dev" "$work/fs"
	mkdir -p "$work/fs/src" && git ls-files -z | xargs -0 cp --parents -t "$work/fs/src"
	cp -r /usr/share/doc /usr/bin "$work/fs/" 2>/dev/null || true
	umount "$work/fs"; losetup -d "$dev"
	for _ in $(seq 600); do
		line=$("$vrep" status --state "$work/state" --json | python3 -c 'import json,sys
d = json.load(sys.stdin)["disks"][0]; r = d["replication"]
print(r["acked_lsn"] == d["last_lsn"] and r["initial_percent"] == 100, r["record_bytes"], r["wire_bytes"])')
		set -- $line
		[ "$1" = True ] && break
		sleep 0.1
	done
	printf '| %s | %d | %d | %.3f |\n' "$codec" "$2" "$3" "$(echo "$3 / $2" | bc -l)"
	kill $ppid; wait $ppid 2>/dev/null || true
	kill $rpid; wait $rpid 2>/dev/null || true
done
