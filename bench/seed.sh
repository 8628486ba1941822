#!/usr/bin/env bash
# bench/seed.sh [RUNS] — seed export and import MB/s against cp of the
# same image in the same run, and bytes on media for a half-empty disk.
#
# A fully written random image of $SIZE (default 1G) is protected by a
# primary that replicates to nowhere (an export needs replication on);
# `vrep seed export` writes it over 4 directories with parity 2 and with
# parity 1; `vrep seed import` reads it back (with and without the
# read-back verify). cp copies the image and fsyncs it (the export and
# import fsync what they write). All on one file system; the page cache
# is left as it is (dropping it would disturb the rest of the machine),
# so the source is read from cache by every contestant alike.
#
# The drive under this machine writes fast after a pause and slows as
# writes pile up (a virtual disk whose host writes back behind it): a
# contestant timed right after others' gigabytes is slow whatever it
# does (the import with --no-verify ran last and measured 0.26x cp, the
# same work with the verify, just before it, 0.98x). So each contestant
# is paired with a cp timed next to it, each after the drive has
# settled (sync, no dirty pages left, SETTLE seconds, default 5), its
# ratio taken against its own cp; the cp goes first in odd runs, second
# in even ones, and the two imports swap order every run.
# Ratios: min / median / max over RUNS. Then the same for an image half
# zeros, for bytes on media.
#
# DRIVES=MBPS: each of the 4 seed directories is a drive of its own, as
# on real seed media: an ext4 file system on a loop device (direct I/O to
# a file of this disk) whose reads and writes the block layer throttles
# to MBPS MB/s (blkio write_bps_device / read_bps_device, or io.max on
# cgroup v2). The export's paired cp copies the image (on this machine's
# disk, cached) to one such drive; the import's reads a copy of the image
# from one such drive to this machine's disk; the media's pages are
# dropped from the page cache before each read, so every read of a drive
# goes through its throttle. 4 x MBPS must stay below what the disk
# under them does (about 1 GB/s here).
set -euo pipefail
shopt -s inherit_errexit # a failure inside $(...) fails the script too
cd "$(dirname "$0")/.."
source bench/lib.sh
RUNS=${1:-3}
SIZE=${SIZE:-1G}
work=$(realpath -m "${WORK:-bench/work}")/seed
for m in "$work"/drive?; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
for f in "$work"/drive?.img; do [ -e "$f" ] && losetup -j "$f" | cut -d: -f1 | xargs -r -n1 losetup -d; done
rm -rf "$work"; mkdir -p "$work" bench/results
vrep=${VREP:-bin/vrep}
go build -o "$vrep" ./cmd/vrep
bytes=$(numfmt --from=iec "$SIZE")
mb() { python3 -c "print(round($bytes/1e6/$1))"; }
# secs CMD...: the seconds CMD took; fails (with its output) if CMD fails.
secs() {
	local s out
	s=$(date +%s.%N)
	out=$("$@" 2>&1) || { echo "failed: $* — $out" >&2; return 1; }
	python3 -c "print(max($(date +%s.%N)-$s, 1e-3))"
}

# drop FILES...: their pages leave the page cache (written back first).
drop() {
	sync "$@"
	python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "$@"
}
# Where the shards go (d0..d3, e0..e3 under $media), and the paired cps.
media=$work
cp_export() { cp "$img" "$work/copy.img" && sync "$work/copy.img"; rm -f "$work/copy.img"; }
cp_import() { cp "$img" "$work/copy.img" && sync "$work/copy.img"; rm -f "$work/copy.img"; }
before_read() { :; }
before_run() { :; }
throttle() { # DEV BPS: the block layer's limit on DEV (0: none)
	local mm; mm=$(lsblk -dno MAJ:MIN "$1" | tr -d ' ')
	if [ -w /sys/fs/cgroup/blkio/blkio.throttle.write_bps_device ]; then
		echo "$mm $2" >/sys/fs/cgroup/blkio/blkio.throttle.write_bps_device
		echo "$mm $2" >/sys/fs/cgroup/blkio/blkio.throttle.read_bps_device
	elif [ -w /sys/fs/cgroup/io.max ]; then
		[ "$2" = 0 ] && echo "$mm rbps=max wbps=max" >/sys/fs/cgroup/io.max || echo "$mm rbps=$2 wbps=$2" >/sys/fs/cgroup/io.max
	else
		echo "no block throttle here (cgroup blkio or io.max)" >&2; return 1
	fi
}
declare -a loops=()
undrive() {
	[ -n "${pid:-}" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; } || true
	for i in "${!loops[@]}"; do
		umount "$work/drive$i" 2>/dev/null || umount -l "$work/drive$i" 2>/dev/null || true
		throttle "${loops[$i]}" 0 2>/dev/null || true
		losetup -d "${loops[$i]}" 2>/dev/null || true
	done
}
if [ -n "${DRIVES:-}" ]; then
	[ -w /sys/fs/cgroup/blkio/blkio.throttle.write_bps_device ] || [ -w /sys/fs/cgroup/io.max ] ||
		{ echo "DRIVES needs a block throttle (cgroup v1 blkio, or io.max in a cgroup v2 group)" >&2; exit 1; }
	trap undrive EXIT
	media=$work/media
	for i in 0 1 2 3; do
		truncate -s $((bytes * 2 + (256 << 20))) "$work/drive$i.img"
		loops[i]=$(losetup -f --show --direct-io=on "$work/drive$i.img")
		mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "${loops[$i]}"
		mkdir -p "$work/drive$i"; mount "${loops[$i]}" "$work/drive$i"
		throttle "${loops[$i]}" $((DRIVES * 1000000))
	done
	mkdir -p "$media"
	for i in 0 1 2 3; do for x in d e; do mkdir -p "$work/drive$i/$x$i"; ln -s "$work/drive$i/$x$i" "$media/$x$i"; done; done
	# The export's cp: the cached image to one drive. The import's: a copy
	# of the image on one drive (dropped from the cache) to this disk.
	cp_export() { cp "$img" "$work/drive0/copy.img" && sync "$work/drive0/copy.img"; rm -f "$work/drive0/copy.img"; }
	# The copy on the drive is made once per image, before any timing.
	before_run() {
		local src=$work/drive1/$(basename "$img")
		[ -f "$src" ] || { rm -f "$work"/drive1/*.img; cp "$img" "$src"; sync "$src"; }
	}
	cp_import() {
		local src; src=$work/drive1/$(basename "$img")
		drop "$src"
		cp "$src" "$work/copy.img" && sync "$work/copy.img"; rm -f "$work/copy.img"
	}
	before_read() { drop "$media"/d*/*; }
fi

$vrep cert init --dir "$work/pki" >/dev/null
$vrep cert issue --dir "$work/pki" --name p1 >/dev/null
$vrep cert issue --dir "$work/pki" --name r1 >/dev/null

# settle: sync, wait for the dirty pages to be written, then SETTLE s
# (the host's own writeback, which this machine cannot see).
settle() {
	sync
	for _ in $(seq 200); do
		awk '/^(Dirty|Writeback):/ {s += $2} END {exit !(s < 4096)}' /proc/meminfo && break
		sleep 0.1
	done
	sleep "${SETTLE:-5}"
}

# paired CPFUNC CMD...: "MB/s-of-cp MB/s-of-CMD", each timed after
# settle; the cp (CPFUNC: cp_export or cp_import) first in odd runs
# ($run), second in even ones.
paired() {
	local t_cp t_x cpf=$1
	shift
	if ((run % 2)); then
		settle
		t_cp=$(secs "$cpf")
	fi
	settle
	[ "$cpf" = cp_import ] && before_read
	t_x=$(secs "$@")
	if ((run % 2 == 0)); then
		settle
		t_cp=$(secs "$cpf")
	fi
	echo "$(mb "$t_cp") $(mb "$t_x")"
}

run_one() { # IMAGE RUN → "cp e2 cp e1 cp import cp import-noverify media" (MB/s, bytes)
	img=$1 run=$2
	local st=$work/state sock=$work/nbd.sock
	rm -rf "$st" "$work"/rep* "$work/copy.img"
	$vrep primary --state "$st" --disk "vm1/disk0=$img" --nbd "unix:$sock" --replica 127.0.0.1:9 \
		--tls-dir "$work/pki" --name p1 --replica-name r1 --retry-schedule 1h 2>"$work/primary.log" &
	local pid=$!
	trap "kill $pid 2>/dev/null || true" EXIT # run_one runs in a subshell: its own trap
	for _ in $(seq 100); do [ -S "$st/api.sock" ] && break; sleep 0.1; done
	local e2 e1 i in onmedia
	before_run
	e2=$(paired cp_export $vrep seed export vm1 --state "$st" --parity 2 --to "$media/d0" --to "$media/d1" --to "$media/d2" --to "$media/d3")
	onmedia=$(du -cbL "$media"/d0/* "$media"/d1/* "$media"/d2/* "$media"/d3/* | tail -1 | cut -f1)
	e1=$(paired cp_export $vrep seed export vm1 --state "$st" --parity 1 --to "$media/e0" --to "$media/e1" --to "$media/e2" --to "$media/e3")
	kill "$pid"; wait "$pid" || true
	rm -rf "$media"/e*/*
	local from=(--from "$media/d0" --from "$media/d1" --from "$media/d2" --from "$media/d3")
	if ((run % 2)); then
		i=$(paired cp_import $vrep seed import --data "$work/rep" "${from[@]}")
		in=$(paired cp_import $vrep seed import --no-verify --data "$work/rep2" "${from[@]}")
	else
		in=$(paired cp_import $vrep seed import --no-verify --data "$work/rep2" "${from[@]}")
		i=$(paired cp_import $vrep seed import --data "$work/rep" "${from[@]}")
	fi
	cmp "$img" "$work/rep/p1/vm1/disk0/image"
	cmp "$img" "$work/rep2/p1/vm1/disk0/image"
	rm -rf "$work"/rep*
	rm -rf "$media"/d*/*
	echo "$e2 $e1 $i $in $onmedia"
}

full=$work/full.img half=$work/half.img
head -c "$bytes" /dev/urandom >"$full"
cp "$full" "$half"
# Zero every other 4 MiB: half the chunks are zeros.
python3 - "$half" <<'PY'
import sys, os
f = open(sys.argv[1], "r+b"); n = os.path.getsize(sys.argv[1]); z = bytes(4 << 20)
for off in range(0, n, 8 << 20):
    f.seek(off); f.write(z[: min(len(z), n - off)])
PY
declare -a rows
for r in $(seq "$RUNS"); do rows+=("$(run_one "$full" "$r")"); echo "run $r: ${rows[-1]}" >&2; done
col() { for row in "${rows[@]}"; do echo "$row" | cut -d' ' -f"$1"; done | median; }
# rat N: min / median / max over the runs of field N+1 / field N.
rat() {
	for row in "${rows[@]}"; do echo "$row" | awk -v n="$1" '{print $(n+1) / $n}'; done | sort -g |
		awk '{a[NR]=$1} END {printf "%.2f / %.2f / %.2f", a[1], (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR]}'
}
cp_mb=$(for n in 1 3 5 7; do col $n; done | median)
halfrow=$(run_one "$half" 1); halfmedia=$(echo "$halfrow" | cut -d' ' -f9)
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
out=bench/results/seed-$(date +%Y%m%d-%H%M).md
{
	[ -n "${DRIVES:-}" ] && echo "Each seed directory on a drive of its own throttled to $DRIVES MB/s (reads and writes); the export's cp: the image to one such drive; the import's: the image from one such drive (cold) to this disk." && echo
	echo "| $SIZE image, $RUNS runs | MB/s (median) | vs its paired cp: min / median / max |"
	echo "|---|---|---|"
	echo "| cp + fsync of the image (every pairing) | $cp_mb | 1.00 |"
	echo "| seed export, 4 dirs, parity 2 (2.0x bytes written) | $(col 2) | **$(rat 1)** |"
	echo "| seed export, 4 dirs, parity 1 (1.33x bytes written) | $(col 4) | $(rat 3) |"
	echo "| seed import, parity 2, with read-back verify | $(col 6) | **$(rat 5)** |"
	echo "| seed import, parity 2, --no-verify | $(col 8) | $(rat 7) |"
	echo
	echo "Half-empty $SIZE image (every other 4 MiB zero), 4 dirs, parity 2: $halfmedia bytes on media for $bytes of image ($(ratio "$halfmedia" "$bytes")x; data alone would be 0.50x, parity 2 of 4 doubles it)."
} | tee "$out"
