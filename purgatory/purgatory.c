/*
 * xenkdump purgatory: verify, back up, report.  Called once from entry.S on
 * our own stack with our own GDT loaded.  Touches only the regions it hashes,
 * the backup source and destination, its own segment and (if asked) a UART.
 */
#include "purgatory.h"

static inline void outb(u16 port, u8 v)
{
	__asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 v;

	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* 16550 UART, already programmed by firmware/Xen (com1=...): wait for THR
 * empty (LSR bit 5) a bounded number of times so a missing UART cannot hang
 * us, then write.  Port I/O needs no mapping. */
static void serial_putc(u16 port, char ch)
{
	unsigned spins = 100000;

	while (spins-- && !(inb(port + 5) & 0x20))
		;
	outb(port, (u8)ch);
}

static void serial_puts(u16 port, const char *s)
{
	if (!port)
		return;
	for (; *s; s++) {
		if (*s == '\n')
			serial_putc(port, '\r');
		serial_putc(port, *s);
	}
}

static void serial_hex(u16 port, u64 v, unsigned digits)
{
	if (!port)
		return;
	while (digits--)
		serial_putc(port, "0123456789abcdef"[(v >> (4 * digits)) & 0xf]);
}

/* Compare without early exit; the result is 0 only if all 32 bytes match. */
static u32 digest_diff(const u8 *a, const u8 *b)
{
	u32 d = 0;
	unsigned i;

	for (i = 0; i < 32; i++)
		d |= (u32)(a[i] ^ b[i]);
	return d;
}

void *memcpy(void *dst, const void *src, size_t n)
{
	u8 *d = dst;
	const u8 *s = src;

	while (n--)
		*d++ = *s++;
	return dst;
}

void *memset(void *dst, int c, size_t n)
{
	u8 *d = dst;

	while (n--)
		*d++ = (u8)c;
	return dst;
}

u32 purgatory_main(struct xk_params *p)
{
	u16 port = (u16)p->serial_port;
	struct sha256_ctx ctx;
	u8 digest[32];
	u32 i, bad = 0;

	serial_puts(port, "xenkdump purgatory: verifying\n");
	/* An unfilled or corrupt parameter block is never trusted. */
	if (p->kernel_entry == 0 || p->nr_regions > XK_MAX_REGIONS) {
		serial_puts(port, "xenkdump purgatory: bad parameter block\n");
		return 0;
	}
	/* Every region is checked before anything is written (docs/crash-image.md §2.6): the
	 * backup destination may itself be a verified (all-zero) region. */
	for (i = 0; i < p->nr_regions; i++) {
		const struct xk_region *r = &p->regions[i];

		sha256_init(&ctx);
		sha256_update(&ctx, (const u8 *)r->start, r->size);
		sha256_final(&ctx, digest);
		if (digest_diff(digest, r->sha256)) {
			bad++;
			serial_puts(port, "xenkdump purgatory: sha256 mismatch in region ");
			serial_hex(port, i, 2);
			serial_puts(port, " at 0x");
			serial_hex(port, r->start, 16);
			serial_puts(port, "\n");
		}
	}
	if (bad) {
		serial_puts(port, "xenkdump purgatory: not starting the crash kernel\n");
		return 0;
	}
	/* Save the low memory the crash kernel will reuse (§2.2). */
	if (p->backup_size)
		memcpy((void *)p->backup_dst, (const void *)p->backup_src, p->backup_size);
	serial_puts(port, "xenkdump purgatory: ok, starting the crash kernel\n");
	return XK_VERIFY_OK;
}
