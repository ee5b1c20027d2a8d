/* xenctrl.h: struct e820entry is __attribute__((packed)), 20 bytes; an
 * unpacked declaration would be 24 bytes and garble every entry after the
 * first (docs/xen-kexec-contract.md §2.8).  This file is given to cdef(packed=True). */

struct e820entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
};
