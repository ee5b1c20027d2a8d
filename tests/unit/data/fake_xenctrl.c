/* A stand-in for libxenctrl, compiled by tests/unit/test_xen_refusals.py.
 *
 * It exports every function the binding declares (decl/xenctrl.h and
 * decl/xencall.h) so that the real XenHypervisor adapter can be driven
 * without Xen.  libxentoollog is the real one: this library links against
 * it, so the binding finds xtl_createlogger_stdiostream through this
 * handle exactly as it does through the real libxenctrl.
 *
 * FAKE_XEN_MODE picks the host:
 *   old     Xen 4.3 (kexec segment loads need 4.4, docs/xen-kexec-contract.md §2.2)
 *   pvh     kexec_op answers ENOSYS, as on a PVH/HVM dom0 (§2.1)
 *   eacces  opening the interface fails with EACCES and logs why
 *   ok      Xen 4.17 with a 256 MiB crash area, 2 CPUs, a small e820
 * FAKE_XEN_XCALL=0 makes xc_interface_xcall_handle return NULL, which
 * sends the adapter to the xc__hypercall_buffer fallback (Xen < 4.12).
 * FAKE_XEN_RECORD names a text file to which calls are appended, one
 * line each, for the test to check.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define PAGE 4096UL
#define MAX_PAGES 64

/* libxentoollog's public API (xentoollog.h), the parts used here. */
typedef struct xentoollog_logger xentoollog_logger;
enum { FAKE_XTL_ERROR = 8 };
void xtl_log(xentoollog_logger *logger, int level, int errnoval,
             const char *context, const char *format, ...);

typedef struct xencall_handle xencall_handle;

struct xc_interface_core {
    xentoollog_logger *logger;
    int status[2]; /* load/unload parity per kexec type */
};
typedef struct xc_interface_core xc_interface;

typedef struct xc_hypercall_buffer {
    void *hbuf;
    struct xc_hypercall_buffer *param_shadow;
    int dir;
    void *ubuf;
    size_t sz;
} xc_hypercall_buffer_t;

typedef struct xen_kexec_segment {
    union {
        const void *h;
        uint64_t pad;
    } buf;
    uint64_t buf_size;
    uint64_t dest_maddr;
    uint64_t dest_size;
} xen_kexec_segment_t;

struct __attribute__((packed)) e820entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;
};

/* The pages handed out, so kexec_load can tell whether a segment's buffer
 * really is hypercall-safe memory from the allocator (0.1 rule 3). */
static struct { char *p; size_t nr; } pages[MAX_PAGES];

static const char *mode(void)
{
    const char *m = getenv("FAKE_XEN_MODE");
    return m ? m : "ok";
}

static int is_mode(const char *m)
{
    return strcmp(mode(), m) == 0;
}

static void record(const char *fmt, ...)
{
    const char *path = getenv("FAKE_XEN_RECORD");
    FILE *f;
    va_list ap;

    if (!path || !(f = fopen(path, "a")))
        return;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

static int fail(int err)
{
    errno = err;
    return -1;
}

xc_interface *xc_interface_open(xentoollog_logger *logger,
                                xentoollog_logger *dombuild_logger,
                                unsigned open_flags)
{
    xc_interface *xch;

    (void)dombuild_logger;
    (void)open_flags;
    if (is_mode("eacces")) {
        xtl_log(logger, FAKE_XTL_ERROR, EACCES, "fake-xenctrl",
                "cannot open /dev/xen/privcmd");
        errno = EACCES;
        return NULL;
    }
    xch = calloc(1, sizeof(*xch));
    if (xch)
        xch->logger = logger;
    record("open\n");
    return xch;
}

int xc_interface_close(xc_interface *xch)
{
    free(xch);
    record("close\n");
    return 0;
}

int xc_version(xc_interface *xch, int cmd, void *arg)
{
    (void)xch;
    switch (cmd) {
    case 0: /* XENVER_version */
        return is_mode("old") ? (4 << 16) | 3 : (4 << 16) | 17;
    case 1: /* XENVER_extraversion: char[16] */
        strcpy(arg, ".99-fake");
        return 0;
    case 9: /* XENVER_commandline: char[1024] */
        strcpy(arg, "crashkernel=256M@2G dom0_mem=1G");
        return 0;
    default:
        return fail(EINVAL);
    }
}

int xc_get_max_cpus(xc_interface *xch)
{
    (void)xch;
    return 2;
}

int xc_physinfo(xc_interface *xch, void *info)
{
    /* The leading u32 fields of xen_sysctl_physinfo (2.5). */
    const uint32_t head[7] = {1, 2, 2, 1, 1, 0, 2400000};

    (void)xch;
    memcpy(info, head, sizeof(head));
    return 0;
}

int xc_get_machine_memory_map(xc_interface *xch, struct e820entry entries[],
                              uint32_t max_entries)
{
    static const struct e820entry map[] = {
        {0x0, 0x9fc00, 1},
        {0xf0000, 0x10000, 2},
        {0x100000, 0xbff00000, 1},
    };
    uint32_t n = sizeof(map) / sizeof(map[0]);

    (void)xch;
    if (max_entries < n)
        return fail(EINVAL);
    memcpy(entries, map, sizeof(map));
    return (int)n;
}

int xc_kexec_exec(xc_interface *xch, int type)
{
    (void)xch;
    (void)type;
    return fail(EPERM);
}

int xc_kexec_get_range(xc_interface *xch, int range, int nr, uint64_t *size,
                       uint64_t *start)
{
    (void)xch;
    if (is_mode("pvh"))
        return fail(ENOSYS);
    switch (range) {
    case 0: /* MA_CRASH: 256 MiB at 2 GiB */
        *start = 0x80000000ULL;
        *size = 256ULL << 20;
        return 0;
    case 1: /* MA_XEN */
        *start = 0x200000ULL;
        *size = 0x400000ULL;
        return 0;
    case 2: /* MA_CPU */
        if (nr < 0 || nr >= 2)
            return fail(EINVAL);
        *start = 0x7ff00000ULL + (uint64_t)nr * 0x1000;
        *size = 0x400;
        return 0;
    case 6: /* MA_VMCOREINFO */
        *start = 0x7fe00000ULL;
        *size = 0x1000;
        return 0;
    default:
        return fail(EINVAL);
    }
}

static int from_allocator(const void *p, uint64_t len)
{
    const char *c = p;
    int i;

    for (i = 0; i < MAX_PAGES; i++)
        if (pages[i].p && c >= pages[i].p &&
            c + len <= pages[i].p + pages[i].nr * PAGE)
            return 1;
    return 0;
}

int xc_kexec_load(xc_interface *xch, uint8_t type, uint16_t arch,
                  uint64_t entry_maddr, uint32_t nr_segments,
                  xen_kexec_segment_t *segments)
{
    uint32_t i;
    uint64_t j;

    if (type > 1)
        return fail(EINVAL);
    record("load type=%u arch=%u entry=%#llx nr=%u\n", type, arch,
           (unsigned long long)entry_maddr, nr_segments);
    for (i = 0; i < nr_segments; i++) {
        const xen_kexec_segment_t *s = &segments[i];
        const unsigned char *b = s->buf.h;
        char *hex = NULL;
        size_t hexlen = 0;
        FILE *h = open_memstream(&hex, &hexlen);

        for (j = 0; b && h && j < s->buf_size; j++)
            fprintf(h, "%02x", b[j]);
        if (h)
            fclose(h);
        record("seg %u buf=%s pooled=%d size=%llu dest=%#llx mem=%#llx data=%s\n", i,
               b ? "ptr" : "NULL", b ? from_allocator(b, s->buf_size) : 0,
               (unsigned long long)s->buf_size, (unsigned long long)s->dest_maddr,
               (unsigned long long)s->dest_size, hex ? hex : "");
        free(hex);
    }
    xch->status[type] ^= 1;
    return 0;
}

int xc_kexec_unload(xc_interface *xch, int type)
{
    if (type < 0 || type > 1)
        return fail(EINVAL);
    record("unload type=%d\n", type);
    xch->status[type] ^= 1;
    return 0;
}

int xc_kexec_status(xc_interface *xch, int type)
{
    if (type < 0 || type > 1)
        return fail(EINVAL);
    return xch->status[type];
}

xencall_handle *xc_interface_xcall_handle(xc_interface *xch)
{
    const char *x = getenv("FAKE_XEN_XCALL");

    if (x && strcmp(x, "0") == 0)
        return NULL;
    return (xencall_handle *)xch;
}

static void *alloc_pages(size_t nr, const char *how)
{
    void *p = mmap(NULL, nr * PAGE, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int i;

    if (p == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    for (i = 0; i < MAX_PAGES; i++)
        if (!pages[i].p) {
            pages[i].p = p;
            pages[i].nr = nr;
            break;
        }
    record("alloc %s nr=%zu\n", how, nr);
    return p;
}

static void free_pages(void *p, size_t nr, const char *how)
{
    int i;

    for (i = 0; i < MAX_PAGES; i++)
        if (pages[i].p == p) {
            pages[i].p = NULL;
            record("free %s nr=%zu match=%d\n", how, nr, pages[i].nr == nr);
            munmap(p, nr * PAGE);
            return;
        }
    record("free %s nr=%zu match=0\n", how, nr);
}

void *xencall_alloc_buffer_pages(xencall_handle *xcall, size_t nr_pages)
{
    (void)xcall;
    return alloc_pages(nr_pages, "xencall");
}

void xencall_free_buffer_pages(xencall_handle *xcall, void *p, size_t nr_pages)
{
    (void)xcall;
    free_pages(p, nr_pages, "xencall");
}

void *xc__hypercall_buffer_alloc_pages(xc_interface *xch,
                                       xc_hypercall_buffer_t *b, int nr_pages)
{
    void *p;

    (void)xch;
    p = alloc_pages((size_t)nr_pages, "hcbuf");
    if (p)
        b->hbuf = p;
    return p;
}

void xc__hypercall_buffer_free_pages(xc_interface *xch,
                                     xc_hypercall_buffer_t *b, int nr_pages)
{
    (void)xch;
    free_pages(b->hbuf, (size_t)nr_pages, "hcbuf");
    b->hbuf = NULL;
}
