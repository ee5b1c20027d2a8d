/*
 * xenkdump purgatory: the parameter block and the freestanding helpers.
 * The layout is the ABI between the purgatory and the daemon's builder
 * (daemon/src/xenkdump/image/purgatory.py declares the same table).
 */
#ifndef XK_PURGATORY_H
#define XK_PURGATORY_H

#define XK_MAX_REGIONS	16
#define XK_VERIFY_OK	0x600DC0DE	/* purgatory_main's only "go" value */

/* struct xk_params offsets used by entry.S */
#define XK_P_KERNEL_ENTRY	0x00
#define XK_P_BOOT_PARAMS	0x08

#ifndef __ASSEMBLER__
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef unsigned long size_t;

struct xk_region {
	u64 start;		/* identity-mapped address of the region */
	u64 size;		/* bytes hashed: buf then zeros up to dest_size */
	u8 sha256[32];
};

struct xk_params {
	u64 kernel_entry;	/* 0x00 */
	u64 boot_params;	/* 0x08 goes to %rsi */
	u64 backup_src;		/* 0x10 */
	u64 backup_dst;		/* 0x18 */
	u64 backup_size;	/* 0x20 0 = no backup */
	u32 serial_port;	/* 0x28 UART I/O base, 0 = silent */
	u32 nr_regions;		/* 0x2C */
	struct xk_region regions[XK_MAX_REGIONS];	/* 0x30 */
};

_Static_assert(sizeof(struct xk_region) == 48, "xk_region size");
_Static_assert(sizeof(struct xk_params) == 0x30 + 16 * 48, "xk_params size");
_Static_assert(__builtin_offsetof(struct xk_params, kernel_entry) == XK_P_KERNEL_ENTRY, "entry");
_Static_assert(__builtin_offsetof(struct xk_params, boot_params) == XK_P_BOOT_PARAMS, "bp");

struct sha256_ctx {
	u32 h[8];
	u64 len;
	u8 buf[64];
	u32 fill;
};

void sha256_init(struct sha256_ctx *c);
void sha256_update(struct sha256_ctx *c, const u8 *p, size_t n);
void sha256_final(struct sha256_ctx *c, u8 out[32]);

u32 purgatory_main(struct xk_params *p);

void *memcpy(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);

#endif /* __ASSEMBLER__ */
#endif
