#!/bin/sh
# xenkdump's capture agent: runs in the crash kernel (busybox sh or dash) and turns
# /proc/vmcore into a dump directory on the configured target.  See docs/capture.md.
#
# Order of work (the cheap, precious parts first):
#   1. reach the target (mount a device or NFS export, or check the SSH server);
#   2. make <target>/.incoming-<host>-<time>/ holding an `incomplete` marker;
#   3. dom0's kernel log (makedumpfile --dump-dmesg) -> dmesg.txt;
#   4. Xen's console ring, located through Xen's symbols (checked against Xen's
#      VMCOREINFO in the dump) -> xen-console.txt;
#   5. the vmcore: makedumpfile -X -d LEVEL (ELF, or compressed; work dir on the target,
#      no threads: makedumpfile refuses them on Xen), then -X -d 1, then -X -d 0, then
#      a raw copy only when the target has room for all of /proc/vmcore;
#   6. metadata.json (every step's exit code, duration and size, each file's sha256,
#      the crash kernel's lowest MemAvailable while it worked and its uptime);
#   7. rename to <target>/<host>-<time>/ (atomic), drop the marker, apply retention;
#   8. final_action (or failure_action when no vmcore was saved): reboot, halt, shell.
#
# Self-test mode (xenkdump.selftest=<id> on the command line: a staging VM of
# xenkdump's self-test, docs/selftest.md §3): the same pipeline, but the target is
# the VM's scratch disk (ext4 on /dev/vda, never the configured target), each stage
# is reported on the console as "xenkdump-selftest: <id> <stage> [key=value...]" (or
# "... failed <stage> <reason>"), the self-test's token must be in the saved dmesg or
# in /proc/vmcore, no retention runs and the VM powers off.
#
# Configuration: XK_CONF (default /etc/xenkdump/capture.conf), KEY='value' lines that
# xenkdump writes (xenkdump/capture/agentconf.py).  Tests override the XK_* hooks
# documented there (paths of /proc files, the makedumpfile, ssh and df commands, actions,
# the memory sampling interval).

set -u

XK_CONF=${XK_CONF:-/etc/xenkdump/capture.conf}
# shellcheck disable=SC1090
[ -r "$XK_CONF" ] && . "$XK_CONF"

: "${XK_VMCORE:=/proc/vmcore}"
: "${XK_UPTIME:=/proc/uptime}"
: "${XK_MEMINFO:=/proc/meminfo}"
: "${XK_MEM_INTERVAL:=0.5}"
: "${XK_MAKEDUMPFILE:=makedumpfile}"
: "${XK_SSH:=ssh}"
: "${XK_DF:=df}"
: "${XK_ACTION_CMD:=}"
: "${XK_TARGET_KIND:=local}"
: "${XK_DEVICE:=}"
: "${XK_FSTYPE:=auto}"
: "${XK_NFS:=}"
: "${XK_NFS_OPTIONS:=vers=4,nolock}"
: "${XK_PATH:=/var/crash}"
: "${XK_MOUNTPOINT:=/run/xenkdump/target}"
: "${XK_SSH_DEST:=}"
: "${XK_SSH_PORT:=22}"
: "${XK_SSH_KEY:=/etc/xenkdump/id_capture}"
: "${XK_SSH_KNOWN_HOSTS:=/etc/xenkdump/known_hosts}"
: "${XK_DUMP_LEVEL:=31}"
: "${XK_FORMAT:=elf}"
: "${XK_COMPRESS:=zlib}"
: "${XK_KEEP:=0}"
: "${XK_MAX_TOTAL:=0}"
: "${XK_REARRANGE_SECONDS:=300}"
: "${XK_FAILURE_ACTION:=reboot}"
: "${XK_FINAL_ACTION:=reboot}"
: "${XK_HOST:=$(hostname 2>/dev/null || echo host)}"
: "${XK_XEN_VERSION:=}"
: "${XK_XEN_CMDLINE:=}"
: "${XK_XEN_RANGE:=}"
: "${XK_XEN_SYMS:=}"
: "${XK_XEN_SYMS_CHECK:=}"
: "${XK_XEN_SYMS_FROM:=}"
: "${XK_XEN_SYMS_MISSING:=}"
: "${XK_XEN_DIRECTMAP_HI:=4294935296}"
: "${XK_DOM0_KERNEL:=}"
: "${XK_KERNEL_SHA256:=}"
: "${XK_INITRD_SHA256:=}"
: "${XK_SCRATCH:=/run/xenkdump}"
: "${XK_CMDLINE:=/proc/cmdline}"
: "${XK_DEVICE_WAIT:=10}"  # seconds for the scratch disk's node to appear

# Self-test mode: the scratch disk instead of the configured target (tests point
# XK_SELFTEST_DEVICE='' and XK_SELFTEST_PATH at a directory).
XK_SELFTEST=$(sed -n 's/.*xenkdump\.selftest=\([a-z0-9]*\).*/\1/p' "$XK_CMDLINE" 2>/dev/null | head -n 1)
if [ -n "$XK_SELFTEST" ]; then
	XK_TARGET_KIND=local
	XK_DEVICE=${XK_SELFTEST_DEVICE-/dev/vda}
	XK_FSTYPE=ext4
	XK_PATH=${XK_SELFTEST_PATH:-/}
	XK_MOUNTPOINT=/run/xenkdump/selftest-target
	XK_KEEP=0
	XK_MAX_TOTAL=0
	XK_FINAL_ACTION=halt
	XK_FAILURE_ACTION=halt
fi

say() { echo "xenkdump-capture: $*" >&2; }

st() {  # a self-test stage marker on the console (xenkdump/selftest/stages.py reads it)
	[ -n "$XK_SELFTEST" ] && echo "xenkdump-selftest: $XK_SELFTEST $*"
	return 0
}

now_cs() {  # centiseconds since boot
	awk '{ split($1, a, "."); printf "%d\n", a[1] * 100 + substr(a[2] "00", 1, 2) }' "$XK_UPTIME" 2>/dev/null || echo 0
}

seconds() {  # centiseconds $1 as seconds with two decimals
	printf '%d.%02d' $(($1 / 100)) $(($1 % 100))
}

json_str() {  # a JSON string literal of $1 (control characters dropped)
	printf '%s' "$1" | tr -d '\000-\010\013\014\016-\037' | awk '
		BEGIN { ORS = ""; printf "\"" }
		{ gsub(/\\/, "\\\\"); gsub(/"/, "\\\""); gsub(/\t/, "\\t"); gsub(/\r/, "\\r")
		  if (NR > 1) printf "\\n"; printf "%s", $0 }
		END { printf "\"" }'
}

# --- the target: a few operations, local (mounted) or over SSH ------------------------

ssh_base() {  # ssh with the key, the pinned host key and the shared connection; then $@
	"$XK_SSH" -p "$XK_SSH_PORT" -i "$XK_SSH_KEY" -o BatchMode=yes \
		-o StrictHostKeyChecking=yes -o UserKnownHostsFile="$XK_SSH_KNOWN_HOSTS" \
		-o ConnectTimeout=20 -o ServerAliveInterval=15 \
		-o ControlPath="$XK_SCRATCH/ssh-control" "$@"
}

ssh_run() {  # a command on the server, through the shared connection when it is up
	ssh_base -o ControlMaster=no "$XK_SSH_DEST" "$@"
}

ssh_share_start() {  # one connection (a master in the background) for every later ssh_run:
	# a dozen commands run on the server, each would otherwise pay a full handshake.
	mkdir -p "$XK_SCRATCH"
	ssh_base -o ControlMaster=yes -f -N "$XK_SSH_DEST" </dev/null >/dev/null 2>&1 ||
		say "SSH: no shared connection; each command connects on its own"
}

ssh_share_stop() {
	ssh_base -O exit "$XK_SSH_DEST" </dev/null >/dev/null 2>&1 || :
}

q() {  # $1 single-quoted for a remote shell
	printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"
}

t_root() {  # the directory dumps go to
	if [ "$XK_TARGET_KIND" = ssh ]; then echo "$XK_PATH"; else echo "$TARGET_DIR"; fi
}

t_sh() {  # run a shell snippet in the target's place (remotely for SSH)
	if [ "$XK_TARGET_KIND" = ssh ]; then ssh_run "sh -c $(q "$1")" </dev/null; else sh -c "$1"; fi
}

t_put() {  # stdin -> file $1
	if [ "$XK_TARGET_KIND" = ssh ]; then ssh_run "cat > $(q "$1")"; else cat > "$1"; fi
}

t_free_bytes() {  # free bytes in directory $1
	t_sh "$XK_DF -Pk $(q "$1") | awk 'NR == 2 { printf \"%.0f\\n\", \$4 * 1024 }'"
}

t_size() {  # size of file $1 in bytes (0 when absent)
	t_sh "if [ -f $(q "$1") ]; then wc -c < $(q "$1"); else echo 0; fi" | tr -d ' '
}

t_sha256() {
	t_sh "sha256sum $(q "$1") 2>/dev/null | cut -d' ' -f1"
}

mount_target() {
	case "$XK_TARGET_KIND" in
	ssh)
		ssh_run true </dev/null || { say "SSH target $XK_SSH_DEST unreachable"; return 1; }
		ssh_share_start
		ssh_run "mkdir -p $(q "$XK_PATH")" </dev/null || { say "SSH target: cannot create $XK_PATH"; return 1; }
		return 0 ;;
	nfs)
		mkdir -p "$XK_MOUNTPOINT"
		# klibc's nfsmount in an initramfs-tools image; mount -t nfs elsewhere.
		if command -v nfsmount >/dev/null 2>&1; then
			nfsmount -o "$XK_NFS_OPTIONS" "$XK_NFS" "$XK_MOUNTPOINT"
		else
			mount -t nfs -o "$XK_NFS_OPTIONS" "$XK_NFS" "$XK_MOUNTPOINT"
		fi || { say "NFS target $XK_NFS: mount failed"; return 1; }
		TARGET_DIR="$XK_MOUNTPOINT/${XK_PATH#/}" ;;
	local)
		if [ -n "$XK_DEVICE" ]; then
			dev=$XK_DEVICE
			case "$dev" in
			UUID=* | LABEL=*)
				i=0
				while ! dev=$(findfs "$XK_DEVICE" 2>/dev/null) && [ $i -lt 30 ]; do
					i=$((i + 1)); sleep 1  # udev/mdev may still be creating the node
				done
				[ -n "$dev" ] || { say "target device $XK_DEVICE not found"; return 1; } ;;
			esac
			mkdir -p "$XK_MOUNTPOINT"
			mount -t "$XK_FSTYPE" "$dev" "$XK_MOUNTPOINT" ||
				{ say "target device $XK_DEVICE ($dev): mount failed"; return 1; }
			TARGET_DIR="$XK_MOUNTPOINT/${XK_PATH#/}"
		else
			TARGET_DIR=$XK_PATH
		fi ;;
	*)
		say "target kind $XK_TARGET_KIND: expected local, nfs or ssh"; return 1 ;;
	esac
	case "$TARGET_DIR" in
	?*/) TARGET_DIR=${TARGET_DIR%/} ;;  # the filesystem's root: <mountpoint>/ -> <mountpoint>
	esac
	mkdir -p "$TARGET_DIR" 2>/dev/null
	[ -d "$TARGET_DIR" ] && [ -w "$TARGET_DIR" ] || { say "target $TARGET_DIR is not writable"; return 1; }
}

# --- the crash kernel's memory: the lowest MemAvailable while the agent works ----------

meminfo() {  # the KiB value of /proc/meminfo's field $1 (empty when absent)
	awk -v f="$1:" '$1 == f { print $2; exit }' "$XK_MEMINFO" 2>/dev/null
}

mem_sample() {  # keep the lowest MemAvailable seen so far in $XK_SCRATCH/mem.min
	a=$(meminfo MemAvailable)
	[ -n "$a" ] || return 0
	m=$(cat "$XK_SCRATCH/mem.min" 2>/dev/null)
	if [ -z "$m" ] || [ "$a" -lt "$m" ]; then echo "$a" > "$XK_SCRATCH/mem.min"; fi
}

mem_watch_start() {  # sample every $XK_MEM_INTERVAL seconds until mem_watch_stop
	: > "$XK_SCRATCH/mem.watch"
	mem_sample
	( while [ -e "$XK_SCRATCH/mem.watch" ]; do mem_sample; sleep "$XK_MEM_INTERVAL"; done ) &
	MEM_WATCH=$!
}

mem_watch_stop() {
	rm -f "$XK_SCRATCH/mem.watch"
	[ -n "${MEM_WATCH:-}" ] && wait "$MEM_WATCH" 2>/dev/null
	MEM_WATCH=""
	mem_sample
}

memory_json() {  # {"total_kib", "available_at_start_kib", "min_available_kib", "peak_used_kib"}
	total=$(meminfo MemTotal)
	low=$(cat "$XK_SCRATCH/mem.min" 2>/dev/null)
	printf '{"total_kib": %s, "available_at_start_kib": %s, "min_available_kib": %s, "peak_used_kib": %s}' \
		"${total:-null}" "${MEM_START:-null}" "${low:-null}" \
		"$( [ -n "$total" ] && [ -n "$low" ] && echo $((total - low)) || echo null)"
}

# --- steps ---------------------------------------------------------------------------

STEPS=""  # JSON objects, comma separated

record_step() {  # name rc start_cs bytes command
	dur=$(( $(now_cs) - $3 ))
	[ -n "$STEPS" ] && STEPS="$STEPS,"
	STEPS="$STEPS
    {\"name\": $(json_str "$1"), \"exit_code\": $2, \"seconds\": $(seconds $dur), \"bytes\": $4, \"command\": $(json_str "$5")}"
	say "step $1: exit $2, $4 bytes, $(seconds $dur) s"
}

step_dmesg() {
	t0=$(now_cs)
	cmd="$XK_MAKEDUMPFILE --dump-dmesg $XK_VMCORE"
	if [ "$XK_TARGET_KIND" = ssh ]; then
		$XK_MAKEDUMPFILE --dump-dmesg "$XK_VMCORE" "$XK_SCRATCH/dmesg.txt" >"$XK_SCRATCH/dmesg.log" 2>&1
		rc=$?
		[ $rc -eq 0 ] && { t_put "$WORK/dmesg.txt" < "$XK_SCRATCH/dmesg.txt" || rc=$?; }
		rm -f "$XK_SCRATCH/dmesg.txt"
	else
		$XK_MAKEDUMPFILE --dump-dmesg "$XK_VMCORE" "$WORK/dmesg.txt" >"$XK_SCRATCH/dmesg.log" 2>&1
		rc=$?
	fi
	record_step dmesg $rc "$t0" "$(t_size "$WORK/dmesg.txt")" "$cmd"
}

elf_phdrs() {  # each program header of $XK_VMCORE (ELF64) as "type offset paddr filesz"
	hdr=$(od -A n -t u1 -v -N 64 "$XK_VMCORE" 2>/dev/null | tr -s ' \n' '  ')
	phoff=$(echo "$hdr" | awk '{ v = 0; for (i = 40; i >= 33; i--) v = v * 256 + $i; printf "%.0f", v }')
	phnum=$(echo "$hdr" | awk '{ printf "%d", $57 + $58 * 256 }')
	[ -n "$phoff" ] && [ "${phnum:-0}" -gt 0 ] || return 1
	od -A n -t u1 -v -j "$phoff" -N $((phnum * 56)) "$XK_VMCORE" | tr -s ' \n' '  ' |
		awk '
		function num(at, n,   v, i) { v = 0; for (i = at + n; i > at; i--) v = v * 256 + $i; return v }
		{ for (p = 0; p < NF / 56; p++) {
			b = p * 56
			printf "%d %.0f %.0f %.0f\n", num(b, 4), num(b + 8, 8), num(b + 24, 8), num(b + 32, 8)
		} }'
}

elf_offset() {  # machine address $1 -> "file_offset bytes_available" in $XK_VMCORE
	elf_phdrs | awk -v want="$1" '
		$1 == 1 && want >= $3 && want < $3 + $4 { printf "%.0f %.0f\n", $2 + want - $3, $3 + $4 - want; f = 1; exit }
		END { exit !f }'
}

dump_bytes() {  # machine address $1, $2 bytes -> stdout (fails when not all in the dump)
	loc=$(elf_offset "$1") || return 1
	off=${loc% *}; avail=${loc#* }
	[ "$avail" -ge "$2" ] || return 1
	# Whole pages, then cut: each read of /proc/vmcore maps the old memory again, so
	# one read per byte (dd bs=1) of Xen's image took many minutes under emulation.
	lead=$((off % 4096))
	dd if="$XK_VMCORE" bs=4096 skip=$((off / 4096)) count=$(((lead + $2 + 4095) / 4096)) 2>/dev/null |
		tail -c +$((lead + 1)) | head -c "$2"
}

dump_u32() {  # the little-endian u32 at machine address $1, in decimal
	loc=$(elf_offset "$1") || return 1
	v=$(od -A n -t u4 -j "${loc% *}" -N 4 "$XK_VMCORE" 2>/dev/null | tr -d ' ')
	[ -n "$v" ] && echo "$v"
}

xen_notes() {  # the dump's notes (the first PT_NOTE, which holds them all) -> stdout
	note=$(elf_phdrs | awk '$1 == 4 { print $2, $4; exit }')
	[ -n "$note" ] && dd if="$XK_VMCORE" bs=1 skip="${note% *}" count="${note#* }" 2>/dev/null
}

xen_phys_start() {  # from Xen's crash-info note (name "Xen", XEN_ELFNOTE_CRASH_INFO):
	# crash_xen_info_t is 8 longs, then xen_phys_start (x86-64)
	xen_notes | od -A n -t u1 -v | tr -s ' \n' '  ' | awk '
		function num(at, n,   v, i) { v = 0; for (i = at + n; i > at; i--) v = v * 256 + $i; return v }
		{ p = 0
		  while (p + 12 <= NF) {
			namesz = num(p, 4); descsz = num(p + 4, 4); type = num(p + 8, 4)
			name = p + 12; desc = name + int((namesz + 3) / 4) * 4
			if (namesz == 4 && $(name + 1) == 88 && $(name + 2) == 101 && $(name + 3) == 110 &&
			    type == 16777217 && descsz >= 80) { printf "%.0f\n", num(desc + 64, 8); exit 0 }
			if (namesz == 0 && descsz == 0) break
			p = desc + int((descsz + 3) / 4) * 4
		  }
		  exit 1 }'
}

xen_sym() {  # the offset of symbol $1 in XK_XEN_SYMS ("name=offset ...")
	for kv in $XK_XEN_SYMS; do [ "${kv%%=*}" = "$1" ] && { echo "${kv#*=}"; return 0; }; done
	return 1
}

xen_console_ring() {  # Xen's console ring, oldest line first -> $XK_SCRATCH/xen-console.txt
	# Sets XEN_CONSOLE_HOW; fails when the ring cannot be located (docs/capture.md §3).
	from="the symbol table of ${XK_XEN_SYMS_FROM:-the Xen binary}"
	xps=$(xen_phys_start) || { XEN_CONSOLE_HOW="the dump has no Xen crash-info note"; return 1; }
	info=$(xen_notes | strings -n 8)
	for check in $XK_XEN_SYMS_CHECK; do
		echo "$info" | grep -qxF "$check" || {
			XEN_CONSOLE_HOW="$XK_XEN_SYMS_FROM is not the Xen that crashed: its symbols do not match Xen's VMCOREINFO ($check)"
			return 1; }
	done
	ptr=$(xen_sym conring) && size_at=$(xen_sym conring_size) && prod_at=$(xen_sym conringp) ||
		{ XEN_CONSOLE_HOW="incomplete symbol list"; return 1; }
	lo=$(dump_u32 $((xps + ptr))) && hi=$(dump_u32 $((xps + ptr + 4))) &&
		size=$(dump_u32 $((xps + size_at))) && prod=$(dump_u32 $((xps + prod_at))) ||
		{ XEN_CONSOLE_HOW="Xen's console variables are not in the dump"; return 1; }
	if [ "$hi" -lt "$XK_XEN_DIRECTMAP_HI" ] || [ "$size" -lt 1 ] || [ "$size" -gt $((64 << 20)) ] ||
		[ $((size & (size - 1))) -ne 0 ]; then
		XEN_CONSOLE_HOW="Xen's console variables make no sense (pointer $hi:$lo, size $size)"
		return 1
	fi
	ring=$(( (hi - XK_XEN_DIRECTMAP_HI) * 4294967296 + lo ))
	dump_bytes "$ring" "$size" > "$XK_SCRATCH/ring.bin" ||
		{ XEN_CONSOLE_HOW="Xen's console ring ($(printf '%#x' "$ring"), $size bytes) is not in the dump"; return 1; }
	# conringp counts every character ever written; the ring holds the last $size.
	if [ "$prod" -le "$size" ]; then
		head -c "$prod" "$XK_SCRATCH/ring.bin"
	else
		at=$((prod % size))
		tail -c +$((at + 1)) "$XK_SCRATCH/ring.bin"
		head -c "$at" "$XK_SCRATCH/ring.bin"
	fi | tr -d '\000' > "$XK_SCRATCH/xen-console.txt"
	rm -f "$XK_SCRATCH/ring.bin"
	XEN_CONSOLE_HOW="Xen's console ring, $size bytes at machine address $(printf '%#x' "$ring") (characters written: $prod), located through conring in $from and checked against Xen's VMCOREINFO"
}

xen_image_scan() {  # the fallback: '(XEN) ' lines in Xen's own image (docs/capture.md §3)
	start=${XK_XEN_RANGE%%+*}
	size=${XK_XEN_RANGE#*+}
	if [ -z "$XK_XEN_RANGE" ]; then
		XEN_CONSOLE_HOW="$1; not searched: Xen's image range was not known when the initramfs was built"
	elif loc=$(elf_offset "$((start))"); then
		avail=${loc#* }
		[ "$avail" -lt "$((size))" ] && size=$avail
		dump_bytes "$((start))" "$((size))" | strings -n 6 | grep '^(XEN) ' > "$XK_SCRATCH/xen-console.txt"
		if [ -s "$XK_SCRATCH/xen-console.txt" ]; then
			XEN_CONSOLE_FOUND=true
			XEN_CONSOLE_HOW="$1; lines beginning '(XEN) ' in Xen's image ($XK_XEN_RANGE) in the dump, a static console ring's; where it wrapped is not known, so the oldest lines may come first or last"
		else
			XEN_CONSOLE_HOW="$1; no '(XEN) ' text in Xen's image ($XK_XEN_RANGE) either"
		fi
	else
		XEN_CONSOLE_HOW="$1; Xen's image ($XK_XEN_RANGE) is not in the dump's memory map"
	fi
}

step_xen_console() {
	t0=$(now_cs)
	XEN_CONSOLE_FOUND=false
	: > "$XK_SCRATCH/xen-console.txt"
	if [ -z "${XK_XEN_SYMS:-}" ]; then
		xen_image_scan "Xen's console ring not located: ${XK_XEN_SYMS_MISSING:-no Xen symbols were found when the initramfs was built}"
	elif xen_console_ring; then
		XEN_CONSOLE_FOUND=true
	else
		xen_image_scan "Xen's console ring not located: $XEN_CONSOLE_HOW"
	fi
	t_put "$WORK/xen-console.txt" < "$XK_SCRATCH/xen-console.txt"
	rc=$?
	rm -f "$XK_SCRATCH/xen-console.txt"
	record_step xen-console $rc "$t0" "$(t_size "$WORK/xen-console.txt")" "Xen's console from $XK_VMCORE"
}

compress_flag() {  # elf: -E (makedumpfile can read dom0's memory of a Xen dump again)
	# printf, not echo: busybox's echo takes -E as its own option.
	[ "$XK_FORMAT" = elf ] && { printf '%s\n' -E; return; }
	case "$XK_COMPRESS" in
	zlib) printf '%s\n' -c ;; lzo) printf '%s\n' -l ;; zstd) printf '%s\n' -z ;;
	snappy) printf '%s\n' -p ;; none) printf '\n' ;; *) printf '%s\n' -c ;;
	esac
}

try_makedumpfile() {  # name, then makedumpfile options; sets VMCORE_OK/VMCORE_HOW
	name=$1; shift
	t0=$(now_cs)
	t_sh "rm -f $(q "$WORK/vmcore")"
	if [ "$XK_TARGET_KIND" = ssh ]; then
		# Flattened format to stdout; its bitmap (2 bits a host page) stays in RAM.
		mkdir -p "$XK_SCRATCH/work"
		cmd="$XK_MAKEDUMPFILE -F $* --work-dir $XK_SCRATCH/work $XK_VMCORE | ssh ... cat > vmcore.flat"
		{ $XK_MAKEDUMPFILE -F "$@" --work-dir "$XK_SCRATCH/work" "$XK_VMCORE" 2>"$XK_SCRATCH/mdf.log"
		  echo $? > "$XK_SCRATCH/mdf.rc"; } | t_put "$WORK/vmcore.flat"
		prc=$?
		rc=$(cat "$XK_SCRATCH/mdf.rc" 2>/dev/null || echo 1)
		[ "$rc" -eq 0 ] && [ $prc -ne 0 ] && rc=$prc
		out="$WORK/vmcore.flat"
	else
		cmd="$XK_MAKEDUMPFILE $* --work-dir $WORK $XK_VMCORE $WORK/vmcore"
		$XK_MAKEDUMPFILE "$@" --work-dir "$WORK" "$XK_VMCORE" "$WORK/vmcore" >"$XK_SCRATCH/mdf.log" 2>&1
		rc=$?
		out="$WORK/vmcore"
	fi
	tail -n 3 "$XK_SCRATCH/mdf.log" 2>/dev/null | sed 's/^/  makedumpfile: /' >&2
	record_step "$name" "$rc" "$t0" "$(t_size "$out")" "$cmd"
	if [ "$rc" -eq 0 ]; then
		VMCORE_OK=true
		VMCORE_HOW="makedumpfile $*"
		[ "$XK_TARGET_KIND" = ssh ] && rearrange_on_server
		return 0
	fi
	t_sh "rm -f $(q "$out")"
	return 1
}

rearrange_on_server() {  # vmcore.flat -> vmcore by the server's makedumpfile -R, bounded
	# A corrupt stream can keep makedumpfile -R busy forever: it runs under the
	# server's timeout(1) (coreutils or busybox), allowed XK_REARRANGE_SECONDS plus a
	# second per 8 MiB of the stream.  Without makedumpfile or timeout there, or when it
	# fails or runs out of time, vmcore.flat stays and metadata.json says why.
	flat=$WORK/vmcore.flat
	size=$(t_size "$flat")
	case $size in '' | *[!0-9]*) size=0 ;; esac
	limit=$((XK_REARRANGE_SECONDS + size / 8388608))
	cmd="timeout $limit makedumpfile -R vmcore < vmcore.flat (on the server)"
	t0=$(now_cs)
	t_sh "command -v makedumpfile >/dev/null || exit 90
command -v timeout >/dev/null || exit 91
timeout $limit makedumpfile -R $(q "$WORK/vmcore") < $(q "$flat") >/dev/null 2>&1 || exit
rm -f $(q "$flat")"
	rc=$?
	case $rc in
	0) record_step "vmcore -R" 0 "$t0" "$(t_size "$WORK/vmcore")" "$cmd"; return 0 ;;
	90) why="the server has no makedumpfile" ;;
	91) why="the server has no timeout command to bound makedumpfile -R" ;;
	124 | 143) why="makedumpfile -R on the server ran out of its $limit s" ;;
	*) why="makedumpfile -R on the server failed (exit $rc)" ;;
	esac
	case $rc in 90 | 91) ;; *) record_step "vmcore -R" "$rc" "$t0" 0 "$cmd" ;; esac
	say "vmcore.flat kept: $why"
	t_sh "rm -f $(q "$WORK/vmcore")"
	VMCORE_FORMAT="flattened: $why (makedumpfile -R vmcore < vmcore.flat)"
}

step_vmcore() {
	VMCORE_OK=false
	VMCORE_HOW="none"
	if [ "$XK_FORMAT" = elf ]; then VMCORE_FORMAT=elf; else VMCORE_FORMAT=kdump-compressed; fi
	comp=$(compress_flag)
	# shellcheck disable=SC2086
	try_makedumpfile "vmcore -d $XK_DUMP_LEVEL" -X -d "$XK_DUMP_LEVEL" $comp && return 0
	if [ "$XK_DUMP_LEVEL" != 1 ]; then
		# shellcheck disable=SC2086
		try_makedumpfile "vmcore -d 1" -X -d 1 $comp && return 0
	fi
	# shellcheck disable=SC2086
	try_makedumpfile "vmcore -d 0" -X -d 0 $comp && return 0
	# Last resort: all of /proc/vmcore, only when it fits.
	t0=$(now_cs)
	need=$(wc -c < "$XK_VMCORE" 2>/dev/null | tr -d ' ')
	free=$(t_free_bytes "$(t_root)")
	if [ -z "$need" ] || [ -z "$free" ] || [ "$free" -le "$need" ]; then
		say "raw copy refused: /proc/vmcore has ${need:-?} bytes, the target ${free:-?} free"
		record_step "vmcore raw" 28 "$t0" 0 "refused: need ${need:-?} bytes, ${free:-?} free"
		return 1
	fi
	t_put "$WORK/vmcore" < "$XK_VMCORE"
	rc=$?
	record_step "vmcore raw" $rc "$t0" "$(t_size "$WORK/vmcore")" "cat $XK_VMCORE"
	if [ $rc -eq 0 ]; then
		VMCORE_OK=true; VMCORE_HOW="raw copy of $XK_VMCORE"; VMCORE_FORMAT=elf
		return 0
	fi
	t_sh "rm -f $(q "$WORK/vmcore")"
	return 1
}

st_token() {  # self-test: the token, derived from the id, in dmesg.txt or /proc/vmcore
	needle="xenkdump-selftest-token-$(printf '%s\n' "$XK_SELFTEST" |
		awk '{ r = ""; for (i = length($0); i > 0; i--) r = r substr($0, i, 1); print r }')"
	size=$(wc -c < "$XK_VMCORE" | tr -d ' ')
	if t_sh "grep -q -F $(q "$needle") $(q "$WORK/dmesg.txt")" 2>/dev/null; then
		where=dmesg
	elif [ "$(tr '\000' '\n' < "$XK_VMCORE" | grep -c -F "$needle")" -gt 0 ]; then
		where=vmcore  # NUL bytes split the dump into short lines (most memory is zero)
	else
		st "failed token-found the token is not in $XK_VMCORE ($size bytes) nor in the saved dmesg: the ELF core header does not describe the crashed system's memory"
		return 1
	fi
	st "token-found vmcore_bytes=$size in=$where"
}

file_json() {  # "name": {"bytes": N, "sha256": "..."} for each file present in $WORK
	first=1
	for f in vmcore vmcore.flat dmesg.txt xen-console.txt; do
		t_sh "[ -f $(q "$WORK/$f") ]" || continue
		[ $first -eq 1 ] || printf ',\n'
		first=0
		printf '    %s: {"bytes": %s, "sha256": %s}' "$(json_str "$f")" "$(t_size "$WORK/$f")" "$(json_str "$(t_sha256 "$WORK/$f")")"
	done
}

write_metadata() {
	result=$1
	{
		printf '{\n  "format": 1,\n  "result": %s,\n' "$(json_str "$result")"
		printf '  "host": %s,\n  "crash_time": %s,\n' "$(json_str "$XK_HOST")" "$(json_str "$CRASH_TIME")"
		printf '  "xen": {"version": %s, "command_line": %s},\n' "$(json_str "$XK_XEN_VERSION")" "$(json_str "$XK_XEN_CMDLINE")"
		printf '  "dom0_kernel": %s,\n' "$(json_str "$XK_DOM0_KERNEL")"
		printf '  "images": {"kernel_sha256": %s, "initrd_sha256": %s},\n' "$(json_str "$XK_KERNEL_SHA256")" "$(json_str "$XK_INITRD_SHA256")"
		printf '  "vmcore": {"saved": %s, "how": %s, "format": %s},\n' "$VMCORE_OK" "$(json_str "$VMCORE_HOW")" "$(json_str "$VMCORE_FORMAT")"
		printf '  "xen_console": {"found": %s, "how": %s},\n' "$XEN_CONSOLE_FOUND" "$(json_str "$XEN_CONSOLE_HOW")"
		printf '  "memory": %s,\n' "$(memory_json)"
		printf '  "uptime": {"agent_start": %s, "metadata": %s},\n' "$(seconds "$START_CS")" "$(seconds "$(now_cs)")"
		printf '  "steps": [%s\n  ],\n' "$STEPS"
		printf '  "files": {\n%s\n  }\n}\n' "$(file_json)"
	} > "$XK_SCRATCH/metadata.json"
	t_put "$WORK/metadata.json" < "$XK_SCRATCH/metadata.json"
}

retention() {  # keep the newest $XK_KEEP dumps and at most $XK_MAX_TOTAL bytes; never $1
	[ "$XK_KEEP" -gt 0 ] 2>/dev/null || [ "$XK_MAX_TOTAL" -gt 0 ] 2>/dev/null || return 0
	t_sh "cd $(q "$(t_root)") || exit 1
		keep=$XK_KEEP; max=$XK_MAX_TOTAL; new=$(q "$1")
		# dump directories, oldest first (by the UTC time at the end of the name)
		list=\$(for d in *-????????T??????Z; do
			[ -d \"\$d\" ] && [ -f \"\$d/metadata.json\" ] && echo \"\${d##*-} \$d\"
		done | sort | cut -d' ' -f2-)
		n=\$(echo \"\$list\" | grep -c .)
		total=0
		for d in \$list; do total=\$((total + \$(du -sk \"\$d\" | cut -f1) * 1024)); done
		for d in \$list; do
			[ \"\$d\" = \"\$new\" ] && continue
			over_keep=0; over_size=0
			[ \"\$keep\" -gt 0 ] && [ \"\$n\" -gt \"\$keep\" ] && over_keep=1
			[ \"\$max\" -gt 0 ] && [ \"\$total\" -gt \"\$max\" ] && over_size=1
			[ \$over_keep -eq 1 ] || [ \$over_size -eq 1 ] || break
			size=\$((\$(du -sk \"\$d\" | cut -f1) * 1024))
			rm -rf \"\$d\" && echo \"retention: removed \$d\" >&2
			n=\$((n - 1)); total=\$((total - size))
		done"
}

act() {  # reboot | halt | shell
	say "$2: $1"
	if [ -n "$XK_ACTION_CMD" ]; then
		$XK_ACTION_CMD "$1"
		return
	fi
	sync
	case "$1" in
	halt) poweroff -f ;;
	shell)
		echo "xenkdump: a shell on the console; exit to reboot" > /dev/console
		setsid sh -c 'exec sh </dev/console >/dev/console 2>&1' || sh
		reboot -f ;;
	*) reboot -f ;;
	esac
}

selftest_disk() {  # self-test: the scratch disk's driver and filesystem, once it is there
	[ -n "$XK_SELFTEST" ] && [ -n "$XK_DEVICE" ] || return 0
	i=0
	while [ ! -b "$XK_DEVICE" ] && [ $i -lt "$XK_DEVICE_WAIT" ]; do
		modprobe -q virtio_pci 2>/dev/null; modprobe -q virtio_blk 2>/dev/null
		i=$((i + 1)); sleep 1
	done
	modprobe -q ext4 2>/dev/null
	return 0
}

selftest_end() {  # self-test: the last stage, then the VM powers off (act: halt)
	[ -n "$XK_SELFTEST" ] || return 0
	if [ "$1" = complete ]; then
		# The lowest MemAvailable while the agent worked (mem_watch_*): the peak.
		st "dump-written bytes=$(t_size "$FINAL/vmcore") dir=$NAME mem_min_avail_kb=$(cat "$XK_SCRATCH/mem.min" 2>/dev/null) mem_total_kb=$(meminfo MemTotal)"
	else
		st "failed dump-written no vmcore was saved ($FINAL/metadata.json says why)"
	fi
	sync
	[ -n "$XK_DEVICE" ] && umount "$XK_MOUNTPOINT" 2>/dev/null
	return 0
}

main() {
	mkdir -p "$XK_SCRATCH"
	START_CS=$(now_cs)
	MEM_START=$(meminfo MemAvailable)
	CRASH_TIME=$(date -u +%Y%m%dT%H%M%SZ)
	NAME="$XK_HOST-$CRASH_TIME"
	XEN_CONSOLE_FOUND=false
	XEN_CONSOLE_HOW="not attempted"
	VMCORE_OK=false; VMCORE_HOW=none; VMCORE_FORMAT=none
	st "crash-kernel-up uptime=$(cut -d' ' -f1 "$XK_UPTIME" 2>/dev/null)"
	st "capture-started agent=xenkdump-capture"
	if [ ! -r "$XK_VMCORE" ]; then
		say "no $XK_VMCORE: this is not a crash kernel boot"
		st "failed token-found no $XK_VMCORE: the crash kernel found no ELF core header (elfcorehdr=)"
		act "$XK_FAILURE_ACTION" failure_action
		return 1
	fi
	selftest_disk
	if ! mount_target; then
		st "failed dump-written the scratch disk $XK_DEVICE could not be mounted as ext4 at $XK_MOUNTPOINT"
		act "$XK_FAILURE_ACTION" failure_action
		return 1
	fi
	ROOT=$(t_root)
	WORK="$ROOT/.incoming-$NAME"
	FINAL="$ROOT/$NAME"
	if ! t_sh "mkdir -p $(q "$WORK") && : > $(q "$WORK/incomplete")"; then
		say "cannot create $WORK"
		st "failed dump-written cannot create $WORK on the scratch disk"
		act "$XK_FAILURE_ACTION" failure_action
		return 1
	fi
	say "saving to $FINAL"
	mem_watch_start
	step_dmesg
	if [ -n "$XK_SELFTEST" ] && ! st_token; then
		mem_watch_stop
		act "$XK_FAILURE_ACTION" failure_action
		return 1
	fi
	step_xen_console
	step_vmcore
	mem_watch_stop
	if [ "$VMCORE_OK" = true ]; then result=complete; else result=failed; fi
	write_metadata "$result"
	# The rename is the commit: a dump directory without `incomplete` is whole.
	if t_sh "rm -f $(q "$WORK/incomplete") && mv $(q "$WORK") $(q "$FINAL")"; then
		say "dump $result: $FINAL"
		[ -n "$XK_SELFTEST" ] || retention "$NAME"
	else
		say "rename to $FINAL failed; the dump stays in $WORK"
		result=failed
	fi
	if [ "$XK_TARGET_KIND" = ssh ]; then ssh_share_stop; else sync; fi
	selftest_end "$result"
	if [ "$result" = complete ]; then
		act "$XK_FINAL_ACTION" final_action
		return 0
	fi
	act "$XK_FAILURE_ACTION" failure_action
	return 1
}

main "$@"
