/* libxencall (xencall.h): hypercall-safe pages for kexec segment data
 * (xen-kexec-abi.md §2.3: libxenctrl bounces only the segment array). */

void *xencall_alloc_buffer_pages(xencall_handle *xcall, size_t nr_pages);
void xencall_free_buffer_pages(xencall_handle *xcall, void *p, size_t nr_pages);
