/* vmcore_scan: find a byte string in an ELF64 core file (tests/e2e).
 *
 * Usage: vmcore_scan FILE INVERTED_HEX
 * The needle is given with every byte inverted so the crash initramfs never
 * holds the token itself.  Prints "found offset=0x.. paddr=0x.." (exit 0) or
 * "notfound scanned=N" (exit 1); 2 on usage or I/O errors.  Streams the file
 * in big reads: busybox grep is OOM-killed on /proc/vmcore (docs/lab.md §6).
 */
#define _GNU_SOURCE
#include <elf.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK (4u << 20)
#define MAX_NEEDLE 256

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* File offset -> physical address through the PT_LOAD headers (0 if none). */
static uint64_t paddr_of(int fd, uint64_t off)
{
	Elf64_Ehdr eh;
	if (pread(fd, &eh, sizeof(eh), 0) != (ssize_t)sizeof(eh) ||
	    memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_phentsize != sizeof(Elf64_Phdr))
		return 0;
	for (unsigned i = 0; i < eh.e_phnum; i++) {
		Elf64_Phdr ph;
		if (pread(fd, &ph, sizeof(ph), eh.e_phoff + (uint64_t)i * sizeof(ph)) != (ssize_t)sizeof(ph))
			return 0;
		if (ph.p_type == PT_LOAD && off >= ph.p_offset && off < ph.p_offset + ph.p_filesz)
			return ph.p_paddr + (off - ph.p_offset);
	}
	return 0;
}

int main(int argc, char **argv)
{
	unsigned char needle[MAX_NEEDLE];
	size_t n = 0;
	if (argc != 3 || strlen(argv[2]) % 2 || strlen(argv[2]) / 2 > MAX_NEEDLE || !argv[2][0]) {
		fprintf(stderr, "usage: vmcore_scan FILE INVERTED_HEX\n");
		return 2;
	}
	for (const char *p = argv[2]; *p; p += 2) {
		int hi = hexval(p[0]), lo = hexval(p[1]);
		if (hi < 0 || lo < 0) {
			fprintf(stderr, "vmcore_scan: bad hex in needle\n");
			return 2;
		}
		needle[n++] = (unsigned char)~((hi << 4) | lo);
	}
	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		perror(argv[1]);
		return 2;
	}
	unsigned char *buf = malloc(CHUNK + MAX_NEEDLE);
	if (!buf)
		return 2;
	uint64_t base = 0; /* file offset of buf[0] */
	size_t have = 0;
	for (;;) {
		ssize_t r = read(fd, buf + have, CHUNK);
		if (r < 0) {
			perror("read");
			return 2;
		}
		have += (size_t)r;
		unsigned char *hit = memmem(buf, have, needle, n);
		if (hit) {
			uint64_t off = base + (uint64_t)(hit - buf);
			printf("found offset=0x%llx paddr=0x%llx\n", (unsigned long long)off,
			       (unsigned long long)paddr_of(fd, off));
			return 0;
		}
		if (r == 0)
			break;
		/* Keep the last n-1 bytes: a match may straddle two reads. */
		size_t keep = have < n - 1 ? have : n - 1;
		memmove(buf, buf + have - keep, keep);
		base += have - keep;
		have = keep;
	}
	printf("notfound scanned=%llu\n", (unsigned long long)(base + have));
	return 1;
}
