/*
 * xenkdump purgatory: entry code, header, parameter block, GDT and stack.
 *
 * Xen jumps here in 64-bit mode with undefined GPRs, an unusable IDT, a GDTR
 * pointing at unmapped Xen memory, CR4 = PAE only and page tables that map
 * only the image's segments (docs/xen-kexec-contract.md §5.2, §5.3).  Everything below is
 * RIP-relative so the same bytes run wherever the planner puts the segment.
 * Layout constants are mirrored in daemon/src/xenkdump/image/purgatory.py.
 */

#define KERNEL_CS	0x10	/* __BOOT_CS, docs/crash-image.md §1.4 */
#define KERNEL_DS	0x18	/* __BOOT_DS */

#include "purgatory.h"

	.section .head, "awx"
	.code64
	.globl	_start
_start:
	/* Offset 0: entering at the segment start also works. */
	jmp	purgatory_start
	.balign	8, 0
header:
	.ascii	"XKPURG01"		/* 0x08 magic */
	.long	1			/* 0x10 version */
	.long	header_end - _start	/* 0x14 header_size */
	.long	params - _start		/* 0x18 params_offset */
	.long	params_end - params	/* 0x1C params_size */
	.long	__entry_offset		/* 0x20 entry_offset */
	.long	__code_offset		/* 0x24 code_offset */
	.long	__code_size		/* 0x28 code_size */
	.long	__file_size		/* 0x2C file_size */
	.long	__mem_size		/* 0x30 memsz (page rounded) */
	.long	XK_MAX_REGIONS		/* 0x34 max_regions */
	.quad	0			/* 0x38 reserved */
header_end:

	/* The parameter block the builder fills in (all zero = refuse to run). */
	.balign	64, 0
	.globl	params
params:
	.quad	0			/* 0x00 kernel_entry */
	.quad	0			/* 0x08 boot_params (-> %rsi) */
	.quad	0			/* 0x10 backup_src */
	.quad	0			/* 0x18 backup_dst */
	.quad	0			/* 0x20 backup_size (0 = none) */
	.long	0			/* 0x28 serial_port (0 = silent) */
	.long	0			/* 0x2C nr_regions */
	.fill	XK_MAX_REGIONS * 48, 1, 0		/* 0x30 regions[16] {start, size, sha256[32]} */
params_end:

	.text
	.globl	purgatory_start
purgatory_start:
	/* Interrupts off and string ops forward before anything else: Xen only
	 * promises IF=0, and DF is not contracted (xen-kexec-contract.md §5.3). */
	cli
	cld

	/* Our own stack first: lretq needs one and Xen's [rsp] is never read. */
	leaq	stack_top(%rip), %rsp

	/* The GDTR base is linear, so the pseudo-descriptor is built at run
	 * time from where we actually are (position independent). */
	leaq	gdt(%rip), %rax
	leaq	gdt_desc(%rip), %rdx
	movw	$(gdt_end - gdt - 1), (%rdx)
	movq	%rax, 2(%rdx)
	lgdt	(%rdx)

	/* Only now may selectors be loaded: Xen's GDT is unmapped (§5.3). */
	movl	$KERNEL_DS, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs

	/* Reload CS from our GDT with a far return. */
	leaq	1f(%rip), %rax
	pushq	$KERNEL_CS
	pushq	%rax
	lretq
1:
	/* Verify every region, then do the backup copy (purgatory.c). */
	leaq	params(%rip), %rdi
	call	purgatory_main
	cmpl	$XK_VERIFY_OK, %eax
	jne	halt_forever

	/* Linux 64-bit entry: rsi = boot_params, everything else zero,
	 * IF = 0 and DF = 0 (crash-image.md §1.4). */
	movq	params + XK_P_BOOT_PARAMS(%rip), %rsi
	pushq	$2
	popfq
	xorl	%eax, %eax
	xorl	%ebx, %ebx
	xorl	%ecx, %ecx
	xorl	%edx, %edx
	xorl	%edi, %edi
	xorl	%ebp, %ebp
	xorl	%r8d, %r8d
	xorl	%r9d, %r9d
	xorl	%r10d, %r10d
	xorl	%r11d, %r11d
	xorl	%r12d, %r12d
	xorl	%r13d, %r13d
	xorl	%r14d, %r14d
	xorl	%r15d, %r15d
	jmp	*params + XK_P_KERNEL_ENTRY(%rip)

	/* A digest mismatch (or an unfilled block) ends here for good.  hlt
	 * alone could be woken by an NMI, hence the loop. */
	.globl	halt_forever
halt_forever:
	cli
1:	hlt
	jmp	1b

	.data
	.balign	16
	/* null, null, 0x10 64-bit code, 0x18 flat data (docs/purgatory.md §3, crash-image.md §1.4). */
gdt:
	.quad	0
	.quad	0
	.quad	0x00AF9A000000FFFF
	.quad	0x00CF92000000FFFF
gdt_end:
	.balign	16
gdt_desc:
	.word	0
	.quad	0

	.bss
	.balign	16
stack_bottom:
	.skip	4096
stack_top:

	.section .note.GNU-stack, "", @progbits
