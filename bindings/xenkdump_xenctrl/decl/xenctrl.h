/* libxenctrl (xenctrl.h, xen/kexec.h, xen/version.h): the calls xenkdump
 * makes, declared for cffi ABI mode (docs/xen-kexec-contract.md §2.6, §2.3).
 * Layouts are checked against the real headers by
 * tests/unit/test_struct_layout.py. */

typedef struct xc_interface_core xc_interface;
typedef struct xencall_handle xencall_handle;

/* xenctrl.h: only used with the xc__hypercall_buffer_*_pages fallback
 * (Xen < 4.12, no xc_interface_xcall_handle); 40 bytes (§2.7). */
typedef struct xc_hypercall_buffer {
    void *hbuf;
    struct xc_hypercall_buffer *param_shadow;
    int dir;
    void *ubuf;
    size_t sz;
} xc_hypercall_buffer_t;

/* xen/kexec.h: buf is a guest handle, i.e. one pointer on x86_64 (§2.3). */
typedef struct xen_kexec_segment {
    union {
        const void *h;
        uint64_t _pad;
    } buf;
    uint64_t buf_size;
    uint64_t dest_maddr;
    uint64_t dest_size;
} xen_kexec_segment_t;

/* xen/version.h */
#define XENVER_version 0
#define XENVER_extraversion 1
#define XENVER_capabilities 3
#define XENVER_commandline 9

/* xen/kexec.h */
#define KEXEC_TYPE_DEFAULT 0
#define KEXEC_TYPE_CRASH 1
#define KEXEC_RANGE_MA_CRASH 0
#define KEXEC_RANGE_MA_XEN 1
#define KEXEC_RANGE_MA_CPU 2
#define KEXEC_RANGE_MA_VMCOREINFO 6

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger, unsigned open_flags);
int xc_interface_close(xc_interface *xch);
int xc_version(xc_interface *xch, int cmd, void *arg);
int xc_get_max_cpus(xc_interface *xch);
/* info is an opaque buffer: xc_physinfo_t's size and later offsets vary by
 * Xen release (§2.9). */
int xc_physinfo(xc_interface *xch, void *info);
int xc_get_machine_memory_map(xc_interface *xch, struct e820entry entries[], uint32_t max_entries);
/* Declared so that the symbol is checked; xenkdump never calls it outside a
 * deliberate test (it does not return on success). */
int xc_kexec_exec(xc_interface *xch, int type);
int xc_kexec_get_range(xc_interface *xch, int range, int nr, uint64_t *size, uint64_t *start);
int xc_kexec_load(xc_interface *xch, uint8_t type, uint16_t arch, uint64_t entry_maddr, uint32_t nr_segments, xen_kexec_segment_t *segments);
int xc_kexec_unload(xc_interface *xch, int type);
/* Xen 4.9 and later. */
int xc_kexec_status(xc_interface *xch, int type);
/* Xen 4.12 and later. */
xencall_handle *xc_interface_xcall_handle(xc_interface *xch);
void *xc__hypercall_buffer_alloc_pages(xc_interface *xch, xc_hypercall_buffer_t *b, int nr_pages);
void xc__hypercall_buffer_free_pages(xc_interface *xch, xc_hypercall_buffer_t *b, int nr_pages);
